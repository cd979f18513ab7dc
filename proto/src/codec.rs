//! The codec of every Portcullis service: prost, except that a message that
//! does not decode (invalid UTF-8 in a string, random bytes, nesting past
//! prost's recursion limit of 100 messages, about a 32-level-deep
//! `google.protobuf.Struct`) is the caller's error, INVALID_ARGUMENT with
//! an `ErrorInfo` reason `MALFORMED_REQUEST`, not the INTERNAL that
//! tonic-prost answers.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;
use tonic_types::{ErrorDetails, StatusExt};

#[derive(Debug, Clone)]
pub struct StrictCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        StrictCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder { _pd: PhantomData }
    }
}

#[derive(Debug, Clone)]
pub struct StrictDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            Status::with_error_details(
                tonic::Code::InvalidArgument,
                format!("malformed request: the message is not valid protobuf for its type ({e})"),
                ErrorDetails::with_error_info(
                    "MALFORMED_REQUEST",
                    "portcullis.dev",
                    std::collections::HashMap::<String, String>::new(),
                ),
            )
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
