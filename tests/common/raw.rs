//! A gRPC client that sends and receives raw message bytes: calls any method by name (as the
//! descriptors list them) and sends malformed or oversize messages a generated client cannot.
use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

#[derive(Default, Clone)]
pub struct RawCodec;

pub struct RawEnc;
pub struct RawDec;

impl Encoder for RawEnc {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut v = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEnc;
    type Decoder = RawDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RawDec {
        RawDec
    }
}

/// What a call answered: the status code, the `x-request-id` header.
pub struct Answer {
    pub code: tonic::Code,
    pub request_id: Option<String>,
}

fn request_id(md: &tonic::metadata::MetadataMap) -> Option<String> {
    md.get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Calls `package.Service/Method` with `body` (unary, or the first item of a server stream).
pub async fn call(
    ch: Channel,
    method: &str,
    body: Vec<u8>,
    bearer: Option<&str>,
    streaming: bool,
) -> Answer {
    let mut grpc = tonic::client::Grpc::new(ch).max_decoding_message_size(64 << 20);
    grpc.ready().await.unwrap();
    let path: http::uri::PathAndQuery = format!("/{method}").parse().unwrap();
    let mut req = Request::new(body);
    if let Some(b) = bearer {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {b}").parse().unwrap());
    }
    let r = if streaming {
        grpc.server_streaming(req, path, RawCodec)
            .await
            .map(|r| request_id(r.metadata()))
    } else {
        let r: Result<Response<Vec<u8>>, Status> = grpc.unary(req, path, RawCodec).await;
        r.map(|r| request_id(r.metadata()))
    };
    match r {
        Ok(request_id) => Answer {
            code: tonic::Code::Ok,
            request_id,
        },
        Err(s) => Answer {
            code: s.code(),
            request_id: request_id(s.metadata()),
        },
    }
}
