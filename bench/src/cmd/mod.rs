//! One module per benchmark: its clap arguments and its `run`.

pub(crate) mod codec;
pub(crate) mod costmodel;
pub(crate) mod e2e;
pub(crate) mod events;
pub(crate) mod fallback;
pub(crate) mod link;
pub(crate) mod llm_split;
pub(crate) mod machine;
pub(crate) mod matmul;
pub(crate) mod model;
pub(crate) mod policy;
pub(crate) mod transport;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use splitstream_transport::CodecChoice;

/// `--codec`: the transport's codec names, listed in `--help`; anything else is a usage
/// error (exit 2).
pub(crate) fn codec_parser() -> impl TypedValueParser<Value = CodecChoice> {
    PossibleValuesParser::new(CodecChoice::ALL.map(CodecChoice::name))
        .map(|s| CodecChoice::parse(&s).expect("clap admits only listed names"))
}
