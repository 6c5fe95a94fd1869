//! `og-llava inspect llm` and `og-llava generate`.

use std::io::Write;
use std::path::Path;

use burn::tensor::backend::Backend;
use og_llava::BackendTask;
use og_llm::{ChatTokenizer, GenerationConfig, LlamaForCausalLM, Message, Sampling};

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
    og_llava::dispatch(crate::device_spec(args.device.as_deref())?, Inspect(args))?
}

struct Generate<'a> {
    args: &'a GenerateArgs,
    tokenizer: ChatTokenizer,
}

impl BackendTask for Generate<'_> {
    type Output = Result<(), CliError>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let a = self.args;
        let model = load::<B>(&a.model, a.adapter.as_deref(), &device)?;
        let tok = &self.tokenizer;
        let prompt = if a.raw {
            let mut ids = tok.bos_id().into_iter().collect::<Vec<_>>();
            ids.extend(tok.encode(&a.prompt, false)?);
            ids
        } else {
            let text = tok.render(&[Message::new("user", a.prompt.clone())], true)?;
            tok.encode(&text, false)?
        };
        let config = og_llm::LlamaConfig::from_hf_dir(&a.model)?;
        let mut eos = config.eos_token_ids.clone();
        eos.extend(tok.eos_id());
        eos.extend(tok.token_id("<|eot_id|>"));
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
        // Stream: decode the growing answer and print what is new.
        let mut answer: Vec<u32> = Vec::new();
        let mut shown = 0usize;
        let mut stdout = std::io::stdout();
        model.generate(&prompt, &cfg, |t| {
            answer.push(t);
            if let Ok(text) = tok.decode(&answer, true)
                && text.len() > shown
                && text.is_char_boundary(shown)
            {
                let _ = write!(stdout, "{}", &text[shown..]);
                let _ = stdout.flush();
                shown = text.len();
            }
        })?;
        println!();
        Ok(())
    }
}

pub fn generate(args: &GenerateArgs) -> Result<(), CliError> {
    crate::require_model_dir(&args.model)?;
    let tokenizer = ChatTokenizer::from_dir(&args.model)?;
    og_llava::dispatch(
        crate::device_spec(args.device.as_deref())?,
        Generate { args, tokenizer },
    )?
}
