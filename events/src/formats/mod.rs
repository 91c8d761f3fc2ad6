//! One module per recording format: header parsing and a streaming decoder each.

pub mod aedat2;
pub mod aedat31;
pub mod aedat4;
pub mod nbin;
pub mod prophesee;
pub mod text;
