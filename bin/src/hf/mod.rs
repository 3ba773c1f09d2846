//! Hugging Face LLaMA folders (`LlamaForCausalLM`): what `frugal export --format hf`
//! writes and `frugal train --init-from` reads. A folder holds `config.json`
//! ([`config`]) and the weights in safetensors files ([`tensors`]) under the
//! names `transformers` uses ([`layout`]), with Wq and Wk rows permuted from
//! frugal's interleaved RoPE pairs to `transformers`' rotated halves.

pub mod config;
pub mod layout;
pub mod tensors;

/// The model's configuration in a folder.
pub const CONFIG_FILE: &str = "config.json";
/// The weights, when they are one file.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of sharded weights (`model-0000x-of-0000y.safetensors`).
pub const INDEX_FILE: &str = "model.safetensors.index.json";
