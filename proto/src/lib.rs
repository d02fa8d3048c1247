//! Generated Rust types for the `complaints.*.v1` packages, plus the encoded descriptor set
//! that backs gRPC server reflection.

/// Every file of the contracts (and the well-known types they import), for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/complaints_descriptor.bin"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("complaints.common.v1");
    }
}
pub mod events {
    pub mod v1 {
        tonic::include_proto!("complaints.events.v1");
    }
}
pub mod intake {
    pub mod v1 {
        tonic::include_proto!("complaints.intake.v1");
    }
}
pub mod cases {
    pub mod v1 {
        tonic::include_proto!("complaints.cases.v1");
    }
}
pub mod sla {
    pub mod v1 {
        tonic::include_proto!("complaints.sla.v1");
    }
}
pub mod survey {
    pub mod v1 {
        tonic::include_proto!("complaints.survey.v1");
    }
}
pub mod scoring {
    pub mod v1 {
        tonic::include_proto!("complaints.scoring.v1");
    }
}
