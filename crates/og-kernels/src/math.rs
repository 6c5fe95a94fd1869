//! Element-wise f32 kernels written so the compiler vectorises them, compiled once per x86
//! instruction-set level (AVX-512, AVX2 + FMA, baseline) and chosen at run time.

use rayon::prelude::*;

/// Elements per parallel task: large enough that scheduling is noise, small enough that two
/// cores share a [577, 4096] activation evenly.
const CHUNK: usize = 16 * 1024;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a high part exact in f32 and the remainder (Cody–Waite reduction).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5 · 2²³: adding it rounds to the nearest integer and leaves that integer in the low
/// mantissa bits.
const ROUND: f32 = 12_582_912.0;

/// e^x to about 1 ulp, branch-free (so it vectorises). Arguments above 88 give e^88;
/// arguments below −87 give 0, as below about −87.3 the result would be subnormal, and
/// subnormal operands slow every product they reach (a masked softmax's probabilities feed
/// two matrix products); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor series of e^r on |r| ≤ ln2/2: the degree-7 term is below 2⁻²³.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let k = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let y = p * f32::from_bits((k.wrapping_add(127) << 23) as u32);
    if underflow { 0.0 } else { y }
}

/// σ(x) = 1 / (1 + e^(−x)).
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Generates `$name(&[f32]…, &mut [f32])` that runs `$body` on slices, compiled for AVX-512,
/// AVX2 + FMA and the baseline, and split over rayon's threads for large inputs.
macro_rules! elementwise {
    ($(#[$doc:meta])* $name:ident($($input:ident),+) => |$($x:ident),+| $body:expr) => {
        $(#[$doc])*
        pub(crate) fn $name($($input: &[f32],)+ out: &mut [f32]) {
            #[inline(always)]
            fn body($($input: &[f32],)+ out: &mut [f32]) {
                for (i, o) in out.iter_mut().enumerate() {
                    $(let $x = $input[i];)+
                    *o = $body;
                }
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
            unsafe fn v4($($input: &[f32],)+ out: &mut [f32]) {
                body($($input,)+ out)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn v3($($input: &[f32],)+ out: &mut [f32]) {
                body($($input,)+ out)
            }
            fn run($($input: &[f32],)+ out: &mut [f32]) {
                $(assert_eq!($input.len(), out.len());)+
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx512f")
                        && std::arch::is_x86_feature_detected!("avx512vl")
                        && std::arch::is_x86_feature_detected!("avx512dq")
                    {
                        // SAFETY: the CPU has the features `v4` is compiled for.
                        return unsafe { v4($($input,)+ out) };
                    }
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: the CPU has the features `v3` is compiled for.
                        return unsafe { v3($($input,)+ out) };
                    }
                }
                body($($input,)+ out)
            }
            if out.len() <= CHUNK {
                run($($input,)+ out);
            } else {
                out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
                    let range = c * CHUNK..c * CHUNK + out.len();
                    run($(&$input[range.clone()],)+ out);
                });
            }
        }
    };
}

/// erf(x) as a rational function of x² on [−4, 4] (beyond, ±1 to f32 precision): the
/// minimax approximation Eigen and XLA use for f32, branch-free; measured ≤ 4.2·10⁻⁷ from the
/// exact erf over [−6, 6].
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = -2.726_142_3e-10;
    let p = p * x2 + 2.770_681_4e-8;
    let p = p * x2 - 2.101_024e-6;
    let p = p * x2 - 5.692_506_4e-5;
    let p = p * x2 - 7.349_906_3e-4;
    let p = p * x2 - 2.954_600_2e-3;
    let p = p * x2 - 1.609_603_3e-2;
    let q = -1.456_607_2e-5;
    let q = q * x2 - 2.133_740_6e-4;
    let q = q * x2 - 1.682_827e-3;
    let q = q * x2 - 7.373_329e-3;
    let q = q * x2 - 1.426_474e-2;
    x * p / q
}

elementwise! {
    /// GELU with the exact erf (PyTorch's default `gelu`): x · (1 + erf(x / √2)) / 2.
    gelu(x) => |v| 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
}

elementwise! {
    /// CLIP's QuickGELU: x · σ(1.702 x).
    quick_gelu(x) => |v| v * sigmoid(1.702 * v)
}

elementwise! {
    /// Llama's SwiGLU product: silu(gate) · up = gate · σ(gate) · up.
    silu_mul(gate, up) => |g, u| g * sigmoid(g) * u
}

elementwise! {
    /// The SwiGLU product's gradient with respect to `gate`:
    /// d · up · σ(g) · (1 + g · (1 − σ(g))).
    silu_mul_grad_gate(gate, up, grad) => |g, u, d| {
        let s = sigmoid(g);
        d * u * s * (1.0 + g * (1.0 - s))
    }
}

elementwise! {
    /// The SwiGLU product's gradient with respect to `up`: d · g · σ(g).
    silu_mul_grad_up(gate, grad) => |g, d| d * g * sigmoid(g)
}

/// Lanes of the partial maxima and sums in [`exp_row_body`]: independent accumulators the
/// compiler keeps in vector registers (a single running f32 max or sum is a serial chain it
/// may not reorder, which leaves the whole loop scalar).
const LANES: usize = 16;

/// Replaces `row` by e^(x − max(row)) in place and returns the sum of the results: the
/// softmax of the row before its normalisation.
#[inline(always)]
fn exp_row_body(row: &mut [f32]) -> f32 {
    let mut maxima = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in maxima.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&maxima)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sums = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, v) in sums.iter_mut().zip(chunk) {
            *v = exp(*v - max);
            *s += *v;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    sum
}

/// For each row of a `[rows, cols]` row-major buffer: e^(x − row max) in place, and the
/// reciprocal of the row's sum in `inv_sums` — a softmax whose normalisation the caller
/// applies later (after a product with the values, on far fewer columns). On this thread.
pub(crate) fn exp_rows(data: &mut [f32], cols: usize, inv_sums: &mut [f32]) {
    #[inline(always)]
    fn body(data: &mut [f32], cols: usize, inv_sums: &mut [f32]) {
        for (row, inv) in data.chunks_mut(cols).zip(inv_sums) {
            *inv = 1.0 / exp_row_body(row);
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
    unsafe fn v4(data: &mut [f32], cols: usize, inv_sums: &mut [f32]) {
        body(data, cols, inv_sums)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn v3(data: &mut [f32], cols: usize, inv_sums: &mut [f32]) {
        body(data, cols, inv_sums)
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: the CPU has the features `v4` is compiled for.
            return unsafe { v4(data, cols, inv_sums) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features `v3` is compiled for.
            return unsafe { v3(data, cols, inv_sums) };
        }
    }
    body(data, cols, inv_sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_std_over_its_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (ours, std) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((ours - std) / std).abs());
            x += 0.001_7;
        }
        assert!(worst < 2.5e-7, "max relative error {worst:e}");
    }

    #[test]
    fn exp_saturates_and_keeps_nan() {
        // Underflow is 0, never a subnormal value.
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(-87.01), 0.0);
        assert!(exp(-87.0).is_normal() && exp(-87.0) < 1e-37);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn elementwise_kernels_match_their_definition_on_every_chunk() {
        // Longer than one parallel chunk and not a multiple of any vector width.
        let n = 3 * CHUNK + 7;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 1001) as f32 - 500.0) / 50.0)
            .collect();
        let u: Vec<f32> = (0..n)
            .map(|i| ((i * 13 % 97) as f32 - 48.0) / 10.0)
            .collect();
        let mut out = vec![0.0; n];
        quick_gelu(&x, &mut out);
        for (i, &v) in x.iter().enumerate() {
            let want = v as f64 / (1.0 + (-1.702 * v as f64).exp());
            assert!(
                (out[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "quick_gelu({v})"
            );
        }
        silu_mul(&x, &u, &mut out);
        for i in 0..n {
            let (g, up) = (x[i] as f64, u[i] as f64);
            let want = g / (1.0 + (-g).exp()) * up;
            assert!(
                (out[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "silu_mul({g}, {up})"
            );
        }
    }

    #[test]
    fn exp_rows_is_the_softmax_before_normalisation() {
        // Rows longer than the lanes and not a multiple of them, with one large score.
        let cols = 3 * LANES + 5;
        let mut rows: Vec<f32> = (0..3 * cols)
            .map(|i| (i % cols) as f32 * 0.3 - 4.0)
            .collect();
        rows[cols + 7] = 80.0;
        let input = rows.clone();
        let mut inv = vec![0.0; 3];
        exp_rows(&mut rows, cols, &mut inv);
        for ((row, x), inv) in rows.chunks(cols).zip(input.chunks(cols)).zip(&inv) {
            // The difference as the kernel rounds it, in f32; its exponential in f64.
            let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
            for (&got, &v) in row.iter().zip(x) {
                let want = ((v - max) as f64).exp();
                assert!((got as f64 - want).abs() <= 1e-6 * want.max(1e-30), "{v}");
            }
            assert!((*inv as f64 * sum - 1.0).abs() < 1e-6);
        }
        assert_eq!(rows[cols + 7], 1.0);
    }
}
