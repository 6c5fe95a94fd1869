//! A bounded reader of pickles as data: the subset of the pickle machine that `torch.save`
//! state dicts use, interpreted without executing anything and without trusting any size.
//!
//! Every value is a tree (a memo reference shares the tree, as an immutable `Rc`), every
//! container knows its depth and its node count, and both are bounded ([`Limits`]), so no
//! later walk can recurse without end or visit exponentially many nodes. Lengths read from the
//! stream are checked against the bytes that remain before anything is allocated. Calls
//! (`REDUCE`, `NEWOBJ`) of a handful of known constructors become values
//! (`collections.OrderedDict`, torch's tensor rebuild functions); any other call becomes an
//! opaque value that is kept but never run.

use std::collections::HashMap;
use std::rc::Rc;

/// Bounds on what one pickle may build.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The deepest nesting of containers.
    pub max_depth: u32,
    /// The most nodes any one value may hold (counting shared subtrees each time they occur).
    pub max_nodes: u64,
    /// The most memo entries.
    pub max_memo: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 64,
            max_nodes: 1 << 22,
            max_memo: 1 << 20,
        }
    }
}

/// A storage reference (`BINPERSID` of torch's `('storage', type, key, location, numel)`).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// The storage class name (`FloatStorage`, `BFloat16Storage`, …).
    pub kind: String,
    pub key: String,
    /// The element count the pickle claims, if it says.
    pub numel: Option<u64>,
}

/// A tensor as torch's `_rebuild_tensor(_v2)` describes it: a view into a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// A container's items with its depth and node count.
#[derive(Debug)]
pub struct Node<T> {
    pub items: Vec<T>,
    depth: u32,
    nodes: u64,
}

/// A pickled value.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Global(Rc<(String, String)>),
    Tuple(Rc<Node<Value>>),
    List(Rc<Node<Value>>),
    Dict(Rc<Node<(Value, Value)>>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// The result of a call this reader does not model (kept, never run).
    Opaque(Rc<(String, String)>),
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(n) | Value::List(n) => n.depth,
            Value::Dict(n) => n.depth,
            _ => 0,
        }
    }

    fn nodes(&self) -> u64 {
        match self {
            Value::Tuple(n) | Value::List(n) => n.nodes,
            Value::Dict(n) => n.nodes,
            _ => 1,
        }
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A tuple's or list's items.
    pub fn items(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(n) | Value::List(n) => Some(&n.items),
            _ => None,
        }
    }
}

/// An entry of the machine's stack.
enum Slot {
    Mark,
    Value(Value),
}

struct Machine<'a> {
    data: &'a [u8],
    at: usize,
    stack: Vec<Slot>,
    memo: HashMap<u32, Value>,
    limits: Limits,
}

type R<T> = std::result::Result<T, String>;

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "the pickle ends inside an item of {n} bytes at byte {}",
                    self.at
                )
            })?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> R<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("a text item without its newline")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "a text item is not UTF-8")?;
        self.at += n + 1;
        Ok(s)
    }

    fn push(&mut self, v: Value) {
        self.stack.push(Slot::Value(v));
    }

    fn pop(&mut self) -> R<Value> {
        match self.stack.pop() {
            Some(Slot::Value(v)) => Ok(v),
            Some(Slot::Mark) => Err("a mark where a value was expected".into()),
            None => Err("the stack is empty".into()),
        }
    }

    fn top(&mut self) -> R<&mut Value> {
        match self.stack.last_mut() {
            Some(Slot::Value(v)) => Ok(v),
            _ => Err("no value on the stack".into()),
        }
    }

    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let mark = self
            .stack
            .iter()
            .rposition(|s| matches!(s, Slot::Mark))
            .ok_or("no mark on the stack")?;
        let items = self
            .stack
            .split_off(mark + 1)
            .into_iter()
            .map(|s| match s {
                Slot::Value(v) => v,
                Slot::Mark => unreachable!("the last mark is at `mark`"),
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }

    /// Depth and node count of a container of `items`, checked against the limits.
    fn measure<'v>(&self, items: impl Iterator<Item = &'v Value>) -> R<(u32, u64)> {
        let (mut depth, mut nodes) = (0u32, 1u64);
        for v in items {
            depth = depth.max(v.depth());
            nodes = nodes.saturating_add(v.nodes());
        }
        let depth = depth + 1;
        if depth > self.limits.max_depth {
            return Err(format!(
                "containers nested {depth} deep (at most {})",
                self.limits.max_depth
            ));
        }
        if nodes > self.limits.max_nodes {
            return Err(format!("a value of over {} objects", self.limits.max_nodes));
        }
        Ok((depth, nodes))
    }

    fn seq(&self, items: Vec<Value>) -> R<Rc<Node<Value>>> {
        let (depth, nodes) = self.measure(items.iter())?;
        Ok(Rc::new(Node {
            items,
            depth,
            nodes,
        }))
    }

    fn dict(&self, items: Vec<(Value, Value)>) -> R<Rc<Node<(Value, Value)>>> {
        let (depth, nodes) = self.measure(items.iter().flat_map(|(k, v)| [k, v]))?;
        Ok(Rc::new(Node {
            items,
            depth,
            nodes,
        }))
    }

    /// Adds `extra` to the list or dict on top of the stack (APPEND(S), SETITEM(S)).
    fn extend_top(&mut self, extra: Vec<Value>, pairs: bool) -> R<()> {
        let top = std::mem::replace(self.top()?, Value::None);
        let grown = match (top, pairs) {
            (Value::List(n), false) => {
                let mut items = Rc::try_unwrap(n).map_or_else(|n| n.items.clone(), |n| n.items);
                items.extend(extra);
                Value::List(self.seq(items)?)
            }
            (Value::Dict(n), true) => {
                if !extra.len().is_multiple_of(2) {
                    return Err("SETITEMS with an odd number of values".into());
                }
                let mut items = Rc::try_unwrap(n).map_or_else(|n| n.items.clone(), |n| n.items);
                let mut it = extra.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    items.push((k, v));
                }
                Value::Dict(self.dict(items)?)
            }
            _ => return Err("APPEND or SETITEM on something that is not a list or dict".into()),
        };
        *self.top()? = grown;
        Ok(())
    }

    fn memo_put(&mut self, index: u32) -> R<()> {
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&index) {
            return Err(format!("over {} memo entries", self.limits.max_memo));
        }
        let v = self.top()?.clone();
        self.memo.insert(index, v);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> R<()> {
        let v = self
            .memo
            .get(&index)
            .cloned()
            .ok_or_else(|| format!("memo entry {index} was never stored"))?;
        self.push(v);
        Ok(())
    }

    fn string(&mut self, n: u64) -> R<()> {
        let n = usize::try_from(n).map_err(|_| "a string longer than memory")?;
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| "a string is not UTF-8")?;
        self.push(Value::Str(s.into()));
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> R<()> {
        let n = usize::try_from(n).map_err(|_| "bytes longer than memory")?;
        let bytes = self.take(n)?;
        self.push(Value::Bytes(bytes.into()));
        Ok(())
    }

    fn long(&mut self, n: usize) -> R<()> {
        let bytes = self.take(n)?;
        if n > 8 {
            // Python ints beyond 64 bits (torch's legacy magic number) are kept as bytes.
            self.push(Value::Bytes(bytes.into()));
            return Ok(());
        }
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(bytes);
        if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
            b[n..].fill(0xff);
        }
        self.push(Value::Int(i64::from_le_bytes(b)));
        Ok(())
    }

    fn global(&mut self, module: String, name: String) {
        self.push(Value::Global(Rc::new((module, name))));
    }

    /// A call: `callable(*args)`, modelled for the constructors state dicts use.
    fn call(&self, callable: Value, args: Value) -> R<Value> {
        let Value::Global(g) = &callable else {
            return Ok(Value::Opaque(Rc::new(("?".into(), "call".into()))));
        };
        let (module, name) = (g.0.as_str(), g.1.as_str());
        let args = args.items().unwrap_or(&[]);
        Ok(match (module, name) {
            ("collections", "OrderedDict") => {
                let pairs = args.first().and_then(Value::items).unwrap_or(&[]);
                let mut items = Vec::with_capacity(pairs.len());
                for p in pairs {
                    if let Some([k, v]) = p.items() {
                        items.push((k.clone(), v.clone()));
                    }
                }
                Value::Dict(self.dict(items)?)
            }
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2") => tensor(args)?,
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => args
                .first()
                .filter(|v| matches!(v, Value::Tensor(_)))
                .cloned()
                .ok_or("_rebuild_parameter without a tensor")?,
            ("torch._tensor", "_rebuild_from_type_v2") => match args {
                [f, _, inner, ..] => self.call(f.clone(), inner.clone())?,
                _ => return Err("_rebuild_from_type_v2 with too few arguments".into()),
            },
            _ => Value::Opaque(g.clone()),
        })
    }

    fn run(&mut self) -> R<Value> {
        loop {
            let at = self.at;
            let op = self.u8()?;
            self.step(op)
                .map_err(|e| format!("{e} (opcode 0x{op:02x} at byte {at})"))?;
            if op == b'.' {
                return self.pop();
            }
        }
    }

    fn step(&mut self, op: u8) -> R<()> {
        match op {
            0x80 => {
                let v = self.u8()?;
                if v > 5 {
                    return Err(format!("pickle protocol {v}"));
                }
            }
            0x95 => {
                self.take(8)?; // FRAME: a length hint
            }
            b'.' => {}
            b'(' => self.stack.push(Slot::Mark),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?.clone();
                self.push(v);
            }
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(self.le()?);
                self.push(Value::Int(v.into()));
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(v.into()));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.le()?);
                self.push(Value::Int(v.into()));
            }
            b'I' | b'L' => {
                let line = self.line()?.trim_end_matches('L');
                let v = match line {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    s => Value::Int(s.parse().map_err(|_| format!("an integer {s:?}"))?),
                };
                self.push(v);
            }
            b'F' => {
                let line = self.line()?;
                let v = line.parse().map_err(|_| format!("a float {line:?}"))?;
                self.push(Value::Float(v));
            }
            b'G' => {
                let v = f64::from_be_bytes(self.le()?);
                self.push(Value::Float(v));
            }
            0x8a => {
                let n = self.u8()?;
                self.long(n.into())?;
            }
            0x8b => {
                let n = u32::from_le_bytes(self.le()?);
                self.long(n as usize)?;
            }
            b'X' => {
                let n = u32::from_le_bytes(self.le()?);
                self.string(n.into())?;
            }
            0x8c => {
                let n = self.u8()?;
                self.string(n.into())?;
            }
            0x8d => {
                let n = u64::from_le_bytes(self.le()?);
                self.string(n)?;
            }
            b'T' => {
                let n = u32::from_le_bytes(self.le()?);
                self.bytes(n.into())?;
            }
            b'U' => {
                let n = self.u8()?;
                // SHORT_BINSTRING: Python 2 str, read as text where it is text.
                let bytes = self.take(n.into())?;
                match std::str::from_utf8(bytes) {
                    Ok(s) => self.push(Value::Str(s.into())),
                    Err(_) => self.push(Value::Bytes(bytes.into())),
                }
            }
            b'B' => {
                let n = u32::from_le_bytes(self.le()?);
                self.bytes(n.into())?;
            }
            b'C' => {
                let n = self.u8()?;
                self.bytes(n.into())?;
            }
            0x8e => {
                let n = u64::from_le_bytes(self.le()?);
                self.bytes(n)?;
            }
            b')' => {
                let t = self.seq(Vec::new())?;
                self.push(Value::Tuple(t));
            }
            b']' => {
                let l = self.seq(Vec::new())?;
                self.push(Value::List(l));
            }
            b'}' => {
                let d = self.dict(Vec::new())?;
                self.push(Value::Dict(d));
            }
            0x8f => {
                let l = self.seq(Vec::new())?; // EMPTY_SET, read as a list
                self.push(Value::List(l));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if self.stack.len() < n {
                    return Err("TUPLE with too few values".into());
                }
                let mut items = (0..n).map(|_| self.pop()).collect::<R<Vec<_>>>()?;
                items.reverse();
                let t = self.seq(items)?;
                self.push(Value::Tuple(t));
            }
            b't' => {
                let items = self.pop_mark()?;
                let t = self.seq(items)?;
                self.push(Value::Tuple(t));
            }
            b'l' | 0x91 => {
                let items = self.pop_mark()?;
                let l = self.seq(items)?;
                self.push(Value::List(l));
            }
            b'd' => {
                let items = self.pop_mark()?;
                if !items.len().is_multiple_of(2) {
                    return Err("DICT with an odd number of values".into());
                }
                let mut it = items.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                let d = self.dict(pairs)?;
                self.push(Value::Dict(d));
            }
            b'a' => {
                let v = self.pop()?;
                self.extend_top(vec![v], false)?;
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.extend_top(items, false)?;
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_top(vec![k, v], true)?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.extend_top(items, true)?;
            }
            b'c' => {
                let module = self.line()?.to_string();
                let name = self.line()?.to_string();
                self.global(module, name);
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module.as_str(), name.as_str()) {
                    (Some(m), Some(n)) => {
                        let (m, n) = (m.to_string(), n.to_string());
                        self.global(m, n);
                    }
                    _ => return Err("STACK_GLOBAL of non-strings".into()),
                }
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.call(callable, args)?;
                self.push(v);
            }
            0x81 => {
                let _args = self.pop()?;
                let cls = self.pop()?;
                let name = match &cls {
                    Value::Global(g) => g.clone(),
                    _ => Rc::new(("?".into(), "object".into())),
                };
                self.push(Value::Opaque(name));
            }
            0x92 => {
                let _kwargs = self.pop()?;
                let _args = self.pop()?;
                self.pop()?;
                self.push(Value::Opaque(Rc::new(("?".into(), "object".into()))));
            }
            b'b' => {
                self.pop()?; // BUILD: the state of an object (a state dict's `_metadata`)
                self.top()?;
            }
            b'Q' => {
                let pid = self.pop()?;
                let storage = storage(&pid)?;
                self.push(Value::Storage(Rc::new(storage)));
            }
            b'q' => {
                let i = self.u8()?;
                self.memo_put(i.into())?;
            }
            b'r' => {
                let i = u32::from_le_bytes(self.le()?);
                self.memo_put(i)?;
            }
            0x94 => {
                let i = u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?;
                self.memo_put(i)?;
            }
            b'h' => {
                let i = self.u8()?;
                self.memo_get(i.into())?;
            }
            b'j' => {
                let i = u32::from_le_bytes(self.le()?);
                self.memo_get(i)?;
            }
            b'p' => {
                let i = self.line()?;
                let i = i.parse().map_err(|_| format!("a memo index {i:?}"))?;
                self.memo_put(i)?;
            }
            b'g' => {
                let i = self.line()?;
                let i = i.parse().map_err(|_| format!("a memo index {i:?}"))?;
                self.memo_get(i)?;
            }
            op => return Err(format!("unsupported opcode 0x{op:02x}")),
        }
        Ok(())
    }
}

/// torch's persistent id of a storage: `('storage', type, key, location, numel, …)`.
fn storage(pid: &Value) -> R<StorageRef> {
    let items = pid.items().ok_or("a persistent id that is not a tuple")?;
    let [tag, kind, key, _location, rest @ ..] = items else {
        return Err("a persistent id with fewer than 4 items".into());
    };
    if tag.as_str() != Some("storage") {
        return Err("a persistent id that is not a storage".into());
    }
    let kind = match kind {
        Value::Global(g) => g.1.clone(),
        Value::Str(s) => s.to_string(),
        _ => return Err("a storage whose type is not a name".into()),
    };
    let key = match key {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        _ => return Err("a storage whose key is not a string".into()),
    };
    let numel = match rest.first().and_then(Value::as_int) {
        Some(n) if n < 0 => return Err(format!("a storage of {n} elements")),
        n => n.map(|n| n as u64),
    };
    Ok(StorageRef { kind, key, numel })
}

/// `_rebuild_tensor(_v2)(storage, offset, size, stride, …)`.
fn tensor(args: &[Value]) -> R<Value> {
    let [Value::Storage(s), offset, size, stride, ..] = args else {
        return Err("a tensor rebuild without storage, offset, size and stride".into());
    };
    let unsigned = |v: &Value, what: &str| -> R<u64> {
        match v.as_int() {
            Some(i) if i >= 0 => Ok(i as u64),
            _ => Err(format!(
                "a tensor {what} that is not a non-negative integer"
            )),
        }
    };
    let list = |v: &Value, what: &str| -> R<Vec<u64>> {
        v.items()
            .ok_or_else(|| format!("a tensor {what} that is not a tuple"))?
            .iter()
            .map(|x| unsigned(x, what))
            .collect()
    };
    let (shape, stride) = (list(size, "size")?, list(stride, "stride")?);
    if shape.len() != stride.len() {
        return Err(format!(
            "a tensor of {} dimensions with {} strides",
            shape.len(),
            stride.len()
        ));
    }
    Ok(Value::Tensor(Rc::new(TensorRef {
        storage: (**s).clone(),
        offset: unsigned(offset, "offset")?,
        shape,
        stride,
    })))
}

/// Reads one pickle from the start of `data`; returns its value and the bytes it used.
pub fn read(data: &[u8], limits: Limits) -> std::result::Result<(Value, usize), String> {
    let mut m = Machine {
        data,
        at: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        limits,
    };
    let v = m.run()?;
    Ok((v, m.at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(data: &[u8]) -> std::result::Result<Value, String> {
        read(data, Limits::default()).map(|(v, _)| v)
    }

    #[test]
    fn nesting_and_sharing_are_bounded_not_recursed() {
        // [[[[…]]]] 100 000 deep: refused at the depth limit, no stack overflow.
        let mut deep = vec![0x80, 2];
        deep.extend(std::iter::repeat_n(b']', 100_000));
        deep.extend(std::iter::repeat_n(b'a', 99_999));
        deep.push(b'.');
        let e = read_all(&deep).unwrap_err();
        assert!(e.contains("nested 65 deep"), "{e}");
        // x = (); x = (x, x) 80 times: 2^80 nodes if expanded; refused by the node count.
        let mut laughs = vec![0x80, 2, b')'];
        for _ in 0..80 {
            laughs.extend([b'q', 0, b'h', 0, 0x86]);
        }
        laughs.push(b'.');
        let e = read_all(&laughs).unwrap_err();
        assert!(e.contains("objects"), "{e}");
    }

    #[test]
    fn lengths_are_checked_against_the_bytes_that_remain() {
        let e = read_all(&[b'X', 0xff, 0xff, 0xff, 0xff, b'a']).unwrap_err();
        assert!(e.contains("ends inside an item of 4294967295 bytes"), "{e}");
        let e = read_all(&[0x8d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(e.contains("ends inside"), "{e}");
        assert!(
            read_all(&[b'h', 7, b'.'])
                .unwrap_err()
                .contains("memo entry 7")
        );
        assert!(
            read_all(&[0xff])
                .unwrap_err()
                .contains("unsupported opcode 0xff")
        );
        assert!(read_all(&[]).unwrap_err().contains("ends inside"));
    }

    #[test]
    fn a_tensor_rebuild_becomes_a_view_description() {
        // OrderedDict([("w", _rebuild_tensor_v2(storage, 2, (2, 3), (3, 1), False))])
        let mut p = vec![0x80, 2];
        p.extend(b"ccollections\nOrderedDict\n)R");
        p.extend(b"(X\x01\x00\x00\x00w");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x08tQ");
        p.extend(b"K\x02K\x02K\x03\x86K\x03K\x01\x86\x89tRu.");
        let v = read_all(&p).unwrap();
        let Value::Dict(d) = v else { panic!("{v:?}") };
        let Value::Tensor(t) = &d.items[0].1 else {
            panic!()
        };
        assert_eq!(t.storage.kind, "FloatStorage");
        assert_eq!((t.offset, t.storage.numel), (2, Some(8)));
        assert_eq!(
            (t.shape.clone(), t.stride.clone()),
            (vec![2, 3], vec![3, 1])
        );
    }
}
