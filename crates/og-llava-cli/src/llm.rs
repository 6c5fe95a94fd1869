//! `og-llava inspect llm` and `og-llava generate`.

use std::io::Write;
use std::path::Path;

use burn::tensor::backend::Backend;
use og_llava::BackendTask;
use og_llm::{ChatTokenizer, GenerationConfig, LlamaForCausalLM, Message, Role, Sampling};

use crate::{CliError, GenerateArgs, InspectLlmArgs};

fn load<B: Backend>(
    model: &Path,
    adapter: Option<&Path>,
    device: &B::Device,
) -> Result<LlamaForCausalLM<B>, CliError> {
    let m = LlamaForCausalLM::<B>::load_hf(model, device)?;
    Ok(match adapter {
        Some(dir) => m.load_peft_adapter(dir)?.merge_lora(),
        None => m,
    })
}

struct Inspect<'a>(&'a InspectLlmArgs);

impl BackendTask for Inspect<'_> {
    type Output = Result<(), CliError>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let a = self.0;
        let model = load::<B>(&a.model, a.adapter.as_deref(), &device)?;
        let ids = vec![a.token_ids.clone()];
        let positions = vec![(0..a.token_ids.len() as i64).collect()];
        let logits = model.forward(model.embed(&ids)?, &positions, None, None)?;
        crate::save_logits(&a.out, logits)
    }
}

pub fn inspect(args: &InspectLlmArgs) -> Result<(), CliError> {
    crate::require_model_dir(&args.model)?;
    og_llava::dispatch(args.device.spec()?, Inspect(args))?
}

/// Stop tokens: the config's EOS ids, the tokenizer's EOS and Llama-3's `<|eot_id|>`.
pub(crate) fn eos_ids(model_dir: &Path, tok: &ChatTokenizer) -> Result<Vec<u32>, CliError> {
    let mut eos = og_llm::LlamaConfig::from_hf_dir(model_dir)?.eos_token_ids;
    eos.extend(tok.eos_id());
    eos.extend(tok.token_id("<|eot_id|>"));
    Ok(eos)
}

/// Prints a growing answer as it is generated: decodes the tokens so far, writes what is new.
pub(crate) struct Streamer<'a> {
    tok: &'a ChatTokenizer,
    answer: Vec<u32>,
    shown: usize,
}

impl<'a> Streamer<'a> {
    pub(crate) fn new(tok: &'a ChatTokenizer) -> Self {
        Self {
            tok,
            answer: Vec::new(),
            shown: 0,
        }
    }

    pub(crate) fn push(&mut self, token: u32) {
        self.answer.push(token);
        if let Ok(text) = self.tok.decode(&self.answer, true)
            && text.len() > self.shown
            && text.is_char_boundary(self.shown)
        {
            let mut stdout = std::io::stdout();
            let _ = write!(stdout, "{}", &text[self.shown..]);
            let _ = stdout.flush();
            self.shown = text.len();
        }
    }
}

struct Generate<'a> {
    args: &'a GenerateArgs,
    tokenizer: ChatTokenizer,
}

impl BackendTask for Generate<'_> {
    type Output = Result<(), CliError>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let a = self.args;
        a.precision.apply::<B>(std::slice::from_ref(&device))?;
        let model = load::<B>(&a.model, a.adapter.as_deref(), &device)?;
        let tok = &self.tokenizer;
        let prompt = if a.raw {
            let mut ids = tok.bos_id().into_iter().collect::<Vec<_>>();
            ids.extend(tok.encode(&a.prompt, false)?);
            ids
        } else {
            let text = tok.render(&[Message::new(Role::User, a.prompt.clone())], true)?;
            tok.encode(&text, false)?
        };
        let eos = eos_ids(&a.model, tok)?;
        let sampling = if a.temperature > 0.0 {
            Sampling::TopP {
                temperature: a.temperature,
                top_p: a.top_p,
                seed: a.seed,
            }
        } else {
            Sampling::Greedy
        };
        let cfg = GenerationConfig {
            max_new_tokens: a.max_new_tokens,
            sampling,
            eos_token_ids: eos,
            use_cache: true,
        };
        let mut streamer = Streamer::new(tok);
        model.generate(&prompt, &cfg, |t| streamer.push(t))?;
        println!();
        Ok(())
    }
}

pub fn generate(args: &GenerateArgs) -> Result<(), CliError> {
    crate::require_model_dir(&args.model)?;
    let tokenizer = ChatTokenizer::from_dir(&args.model)?;
    og_llava::dispatch(args.device.spec()?, Generate { args, tokenizer })?
}
