//! The copier's runtime around its session engine (`copier-engine`): capture files, the
//! workers that own the engines, the dispatch of captured frames to them and the links to the
//! intercepts. The binary (`main.rs`, `online.rs`) adds the XDP program and live capture.

pub mod pcap;
pub mod runtime;
