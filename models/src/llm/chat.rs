//! Chat templates, rendered by a small hand-written renderer: not a Jinja engine.
//!
//! A model ships its template as Jinja (GGUF `tokenizer.chat_template`,
//! tokenizer_config.json `chat_template`). [`ChatTemplate::detect`] recognises the
//! families implemented here from that text; anything else is refused rather than
//! rendered wrongly.
//!
//! ChatML (SmolLM2, Qwen2): `<|im_start|>{role}\n{content}<|im_end|>\n` per message and,
//! for the generation prompt, `<|im_start|>assistant\n`. Some ChatML templates insert a
//! default system message when the conversation has none (SmolLM2: "You are a helpful
//! AI assistant named SmolLM, trained by Hugging Face"); it is read from the template.

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat template this crate renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// ChatML, with the system message put first when the conversation has none.
    ChatMl {
        /// The default system message, if the template has one.
        default_system: Option<String>,
    },
}

/// A template that is not one of those implemented.
#[derive(Debug, thiserror::Error)]
#[error("chat template not supported (only ChatML is implemented): {excerpt}")]
pub struct UnsupportedTemplate {
    /// The template's first characters.
    pub excerpt: String,
}

const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";

impl ChatTemplate {
    /// Plain ChatML without a default system message.
    pub fn chatml() -> Self {
        Self::ChatMl {
            default_system: None,
        }
    }

    /// The template that a model's Jinja text is.
    pub fn detect(jinja: &str) -> Result<Self, UnsupportedTemplate> {
        if !jinja.contains(IM_START) || !jinja.contains(IM_END) {
            return Err(UnsupportedTemplate {
                excerpt: jinja.chars().take(80).collect(),
            });
        }
        // The default system message: a literal `<|im_start|>system\n...<|im_end|>` that
        // the template emits when messages[0] is not a system message.
        let marker = "<|im_start|>system\n";
        let default_system = if jinja.contains("!= 'system'") || jinja.contains("!= \"system\"") {
            jinja.find(marker).and_then(|at| {
                let rest = &jinja[at + marker.len()..];
                rest.find(IM_END).map(|end| rest[..end].to_owned())
            })
        } else {
            None
        };
        // A system text that is itself template code is not a literal default.
        let default_system = default_system.filter(|s| !s.contains("{{") && !s.contains("{%"));
        Ok(Self::ChatMl { default_system })
    }

    /// The prompt text of `messages`; `add_generation_prompt` opens the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        let Self::ChatMl { default_system } = self;
        let mut out = String::new();
        let mut turn = |role: &str, content: &str| {
            out.push_str(IM_START);
            out.push_str(role);
            out.push('\n');
            out.push_str(content);
            out.push_str(IM_END);
            out.push('\n');
        };
        if let Some(system) = default_system {
            if messages.first().is_none_or(|m| m.role != "system") {
                turn("system", system);
            }
        }
        for m in messages {
            turn(&m.role, &m.content);
        }
        if add_generation_prompt {
            out.push_str(IM_START);
            out.push_str("assistant\n");
        }
        out
    }

    /// The text that ends an assistant's turn (a stop string beside the eos id).
    pub fn end_of_turn(&self) -> &'static str {
        IM_END
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_turns_and_the_generation_prompt() {
        let t = ChatTemplate::chatml();
        let text = t.render(&[ChatMessage::new("user", "Hi")], true);
        assert_eq!(
            text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_default_system_message_is_read_from_the_template_and_yields_to_one_given() {
        let jinja = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        let t = ChatTemplate::detect(jinja).expect("ChatML");
        assert_eq!(
            t,
            ChatTemplate::ChatMl {
                default_system: Some("Be brief.".into())
            }
        );
        let with_default = t.render(&[ChatMessage::new("user", "x")], false);
        assert!(with_default.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n"));
        let own = t.render(
            &[
                ChatMessage::new("system", "S"),
                ChatMessage::new("user", "x"),
            ],
            false,
        );
        assert!(own.starts_with("<|im_start|>system\nS<|im_end|>\n<|im_start|>user"));
        assert!(ChatTemplate::detect("{{ bos_token }}[INST]").is_err());
    }
}
