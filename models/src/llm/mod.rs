//! Large language models: the tokenizer and chat templates (this file lists only this
//! branch's modules; the model branch adds its own).
pub mod chat;
pub mod tokenizer;
