//! Exact, load-time rewrites of ONNX graphs that ONNX Runtime's CPU kernels run slowly.
//!
//! ArcFace's MobileFaceNet and IResNet backbones use `PRelu` with a per-channel slope. ONNX
//! Runtime 1.31 runs it badly twice over: its CPU kernel broadcasts the slope element by element
//! in a scalar loop (about a quarter of w600k_mbf's run time), and it is not one of the operators
//! the NCHWc layout transformer keeps in ONNX Runtime's blocked layout, so every `PRelu` costs a
//! `ReorderOutput` before it and a `ReorderInput` after it (98 reorders in w600k_mbf).
//!
//! So each `PRelu(x, s)` with a per-channel slope becomes
//!
//! ```text
//! Relu(x) + DepthwiseConv1x1(Relu(DepthwiseConv1x1(x, -1)), -s)
//! ```
//!
//! which only uses operators the NCHWc transformer handles (the `Add` is even fused into the
//! second convolution). It is exact for every slope, bit for bit: for `x >= 0` the second term is
//! `-s * 0` and the sum is `x`; for `x < 0` the first term is 0 and the second is
//! `(-s) * (-x) = s * x`, one rounded product, as `PRelu` computes it. Measured on w600k_mbf, one
//! thread: 19.0 ms per face as exported, 11.8 ms with the earlier `Max(x, x * s)` form (whose
//! `Max` still forced the reorders), 10.4 ms with this one; outputs bit-identical
//! (the parity test checks the embeddings).
//!
//! The model is edited at the protobuf wire level so no ONNX schema or code generator is
//! needed: only `ModelProto.graph` (7), `GraphProto.node` (1) and `.initializer` (5),
//! `NodeProto` fields input (1), output (2), name (3) and op_type (4), and `TensorProto` fields
//! dims (1), data_type (2), float_data (4), name (8) and raw_data (9) are read; every other
//! field is copied through byte for byte. New nodes carry `AttributeProto`s (name 1, i 3,
//! ints 8, type 20) and new initializers are appended to the graph.

use std::collections::{HashMap, HashSet};

/// Returns the model with every eligible `PRelu` replaced, or `None` when nothing changed.
/// A `PRelu` stays as it is unless its slope is a float initializer of shape `[C, 1, 1]` or
/// `[1, C, 1, 1]`: one slope per channel of an NCHW tensor, the shape a depthwise convolution
/// can carry.
pub fn rewrite_prelu(model: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let fields = parse(model)?;
    let mut changed = 0usize;
    let mut out = Vec::with_capacity(model.len() + 65536);
    for f in &fields {
        match (f.number, &f.value) {
            (7, Value::Bytes(graph)) => {
                let (g, n) = rewrite_graph(graph)?;
                changed += n;
                write_bytes_field(&mut out, 7, &g);
            }
            _ => f.write(&mut out),
        }
    }
    Ok((changed > 0).then_some(out))
}

fn rewrite_graph(graph: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let fields = parse(graph)?;
    let mut slopes: HashMap<String, Vec<f32>> = HashMap::new();
    // The graph field holding each slope, so dropping it below needs no second parse.
    let mut slope_fields: HashMap<usize, String> = HashMap::new();
    for (i, f) in fields.iter().enumerate() {
        if let (5, Value::Bytes(t)) = (f.number, &f.value) {
            if let Some(t) = float_tensor(t)? {
                if per_channel(&t.dims) == Some(t.values.len()) {
                    slope_fields.insert(i, t.name.clone());
                    slopes.insert(t.name, t.values);
                }
            }
        }
    }
    // A slope read by nothing but the PRelus rewritten here is dropped with them (ONNX Runtime
    // would warn about each unused initializer at every load).
    let mut nodes = Vec::new();
    let mut other_uses: HashSet<&str> = HashSet::new();
    for f in &fields {
        if let (1, Value::Bytes(node)) = (f.number, &f.value) {
            let n = parse_node(node)?;
            let own_slope = n.op_type == "PRelu" && n.inputs.len() == 2 && n.outputs.len() == 1;
            for (i, input) in n.inputs.iter().enumerate() {
                if !(own_slope && i == 1) {
                    if let Some((name, _)) = slopes.get_key_value(input.as_str()) {
                        other_uses.insert(name.as_str());
                    }
                }
            }
            nodes.push(n);
        }
    }
    let mut out = Vec::with_capacity(graph.len() + 65536);
    let mut initializers = Vec::new();
    let mut changed = 0;
    let mut nodes = nodes.into_iter();
    for (i, f) in fields.iter().enumerate() {
        if let Some(name) = slope_fields.get(&i) {
            if other_uses.contains(name.as_str()) {
                f.write(&mut out);
            }
            continue;
        }
        let (1, Value::Bytes(_)) = (f.number, &f.value) else {
            f.write(&mut out);
            continue;
        };
        let Some(n) = nodes.next() else {
            return Err("node count changed while rewriting".into());
        };
        let slope = match (n.op_type.as_str(), &n.inputs[..], &n.outputs[..]) {
            ("PRelu", [_, s], [_]) => slopes.get(s),
            _ => None,
        };
        let Some(slope) = slope else {
            f.write(&mut out);
            continue;
        };
        let base = if n.name.is_empty() {
            &n.outputs[0]
        } else {
            &n.name
        };
        let name = |part: &str| format!("{base}/facegroup_prelu_{part}");
        let channels = slope.len();
        initializers.push(conv_weight(&name("minus_one"), &vec![-1.0; channels]));
        initializers.push(conv_weight(
            &name("minus_slope"),
            &slope.iter().map(|s| -s).collect::<Vec<_>>(),
        ));
        let depthwise = [
            Attribute::Int("group", channels as i64),
            Attribute::Ints("kernel_shape", &[1, 1]),
        ];
        let x = n.inputs[0].as_str();
        let nodes = [
            encode_node(&name("pos"), "Relu", &[x], &name("pos"), &[]),
            encode_node(
                &name("neg"),
                "Conv",
                &[x, &name("minus_one")],
                &name("neg"),
                &depthwise,
            ),
            encode_node(
                &name("neg_relu"),
                "Relu",
                &[&name("neg")],
                &name("neg_relu"),
                &[],
            ),
            encode_node(
                &name("neg_scaled"),
                "Conv",
                &[&name("neg_relu"), &name("minus_slope")],
                &name("neg_scaled"),
                &depthwise,
            ),
            encode_node(
                &name("sum"),
                "Add",
                &[&name("pos"), &name("neg_scaled")],
                &n.outputs[0],
                &[],
            ),
        ];
        for node in &nodes {
            write_bytes_field(&mut out, 1, node);
        }
        changed += 1;
    }
    for t in &initializers {
        write_bytes_field(&mut out, 5, t);
    }
    Ok((out, changed))
}

/// The channel count of a per-channel slope shape (`[C, 1, 1]` or `[1, C, 1, 1]`).
fn per_channel(dims: &[i64]) -> Option<usize> {
    match dims {
        [c, 1, 1] | [1, c, 1, 1] if *c > 0 => usize::try_from(*c).ok(),
        _ => None,
    }
}

struct Node {
    inputs: Vec<String>,
    outputs: Vec<String>,
    name: String,
    op_type: String,
}

fn parse_node(bytes: &[u8]) -> Result<Node, String> {
    let mut n = Node {
        inputs: Vec::new(),
        outputs: Vec::new(),
        name: String::new(),
        op_type: String::new(),
    };
    for f in parse(bytes)? {
        if let Value::Bytes(b) = f.value {
            let s = || String::from_utf8(b.to_vec()).map_err(|e| e.to_string());
            match f.number {
                1 => n.inputs.push(s()?),
                2 => n.outputs.push(s()?),
                3 => n.name = s()?,
                4 => n.op_type = s()?,
                _ => {}
            }
        }
    }
    Ok(n)
}

/// A node attribute to encode.
enum Attribute<'a> {
    Int(&'a str, i64),
    Ints(&'a str, &'a [i64]),
}

fn encode_node(
    name: &str,
    op: &str,
    inputs: &[&str],
    output: &str,
    attributes: &[Attribute<'_>],
) -> Vec<u8> {
    // AttributeProto.type values: INT = 2, INTS = 7.
    let mut b = Vec::new();
    for i in inputs {
        write_bytes_field(&mut b, 1, i.as_bytes());
    }
    write_bytes_field(&mut b, 2, output.as_bytes());
    write_bytes_field(&mut b, 3, name.as_bytes());
    write_bytes_field(&mut b, 4, op.as_bytes());
    for a in attributes {
        let mut attr = Vec::new();
        match a {
            Attribute::Int(n, v) => {
                write_bytes_field(&mut attr, 1, n.as_bytes());
                write_varint(&mut attr, 3 << 3);
                write_varint(&mut attr, *v as u64);
                write_varint(&mut attr, 20 << 3);
                write_varint(&mut attr, 2);
            }
            Attribute::Ints(n, vs) => {
                write_bytes_field(&mut attr, 1, n.as_bytes());
                for v in *vs {
                    write_varint(&mut attr, 8 << 3);
                    write_varint(&mut attr, *v as u64);
                }
                write_varint(&mut attr, 20 << 3);
                write_varint(&mut attr, 7);
            }
        }
        write_bytes_field(&mut b, 5, &attr);
    }
    b
}

/// A `[C, 1, 1, 1]` float32 initializer: one depthwise 1x1 filter per channel.
fn conv_weight(name: &str, values: &[f32]) -> Vec<u8> {
    let mut t = Vec::new();
    for d in [values.len() as u64, 1, 1, 1] {
        write_varint(&mut t, 1 << 3);
        write_varint(&mut t, d);
    }
    write_varint(&mut t, 2 << 3);
    write_varint(&mut t, 1); // FLOAT
    write_bytes_field(&mut t, 8, name.as_bytes());
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_bytes_field(&mut t, 9, &raw);
    t
}

/// A float32 initializer read from a `TensorProto`.
struct FloatTensor {
    name: String,
    dims: Vec<i64>,
    values: Vec<f32>,
}

/// The float32 initializer in `bytes`; `None` for other types or external data.
fn float_tensor(bytes: &[u8]) -> Result<Option<FloatTensor>, String> {
    const FLOAT: u64 = 1;
    let (mut name, mut dtype) = (None, None);
    let (mut dims, mut values) = (Vec::new(), Vec::new());
    let floats = |b: &[u8], values: &mut Vec<f32>| {
        for c in b.chunks_exact(4) {
            values.push(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        }
    };
    for f in parse(bytes)? {
        match (f.number, f.value) {
            (1, Value::Varint(d)) => dims.push(d as i64),
            (1, Value::Bytes(mut packed)) => {
                while !packed.is_empty() {
                    dims.push(read_varint(&mut packed)? as i64);
                }
            }
            (2, Value::Varint(t)) => dtype = Some(t),
            (8, Value::Bytes(b)) => {
                name = Some(String::from_utf8(b.to_vec()).map_err(|e| e.to_string())?)
            }
            (9 | 4, Value::Bytes(b)) => floats(b, &mut values),
            (4, Value::Fixed32(v)) => values.push(f32::from_bits(v)),
            _ => {}
        }
    }
    Ok(match (name, dtype) {
        (Some(name), Some(FLOAT)) if !values.is_empty() => Some(FloatTensor { name, dims, values }),
        _ => None,
    })
}

// --- protobuf wire format -------------------------------------------------------------------

enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

struct Field<'a> {
    number: u64,
    value: Value<'a>,
}

impl Field<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self.value {
            Value::Varint(v) => {
                write_varint(out, self.number << 3);
                write_varint(out, v);
            }
            Value::Fixed64(v) => {
                write_varint(out, (self.number << 3) | 1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::Bytes(b) => write_bytes_field(out, self.number, b),
            Value::Fixed32(v) => {
                write_varint(out, (self.number << 3) | 5);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

fn parse(mut buf: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let key = read_varint(&mut buf)?;
        let number = key >> 3;
        let value = match key & 7 {
            0 => Value::Varint(read_varint(&mut buf)?),
            1 => Value::Fixed64(u64::from_le_bytes(
                take(&mut buf, 8)?.try_into().map_err(|_| "short fixed64")?,
            )),
            2 => {
                let len = usize::try_from(read_varint(&mut buf)?).map_err(|_| "length overflow")?;
                Value::Bytes(take(&mut buf, len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(
                take(&mut buf, 4)?.try_into().map_err(|_| "short fixed32")?,
            )),
            w => return Err(format!("unsupported protobuf wire type {w}")),
        };
        fields.push(Field { number, value });
    }
    Ok(fields)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if buf.len() < n {
        return Err("truncated protobuf".into());
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

fn read_varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        v |= u64::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn write_bytes_field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    write_varint(out, (number << 3) | 2);
    write_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, dims: &[u64], values: &[f32]) -> Vec<u8> {
        let mut t = Vec::new();
        for d in dims {
            write_varint(&mut t, 1 << 3);
            write_varint(&mut t, *d);
        }
        write_varint(&mut t, 2 << 3);
        write_varint(&mut t, 1);
        write_bytes_field(&mut t, 8, name.as_bytes());
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_bytes_field(&mut t, 9, &raw);
        t
    }

    fn model(dims: &[u64], slope: &[f32]) -> Vec<u8> {
        let mut g = Vec::new();
        write_bytes_field(&mut g, 1, &encode_node("p", "PRelu", &["x", "s"], "y", &[]));
        write_bytes_field(&mut g, 1, &encode_node("r", "Relu", &["y"], "z", &[]));
        write_bytes_field(&mut g, 5, &tensor("s", dims, slope));
        let mut m = Vec::new();
        write_varint(&mut m, 1 << 3); // ir_version
        write_varint(&mut m, 7);
        write_bytes_field(&mut m, 7, &g);
        m
    }

    fn graph(model: &[u8]) -> Vec<u8> {
        parse(model)
            .expect("model")
            .into_iter()
            .find_map(|f| match (f.number, f.value) {
                (7, Value::Bytes(g)) => Some(g.to_vec()),
                _ => None,
            })
            .expect("graph")
    }

    fn ops(model: &[u8]) -> Vec<String> {
        parse(&graph(model))
            .expect("graph fields")
            .into_iter()
            .filter(|f| f.number == 1)
            .map(|f| match f.value {
                Value::Bytes(b) => parse_node(b).expect("node").op_type,
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn per_channel_prelu_becomes_relu_and_depthwise_convolutions() {
        let m = model(&[3, 1, 1], &[0.25, -0.8, 1.5]);
        let out = rewrite_prelu(&m).expect("rewrite").expect("changed");
        assert_eq!(
            ops(&out),
            vec!["Relu", "Conv", "Relu", "Conv", "Add", "Relu"]
        );
        // Other fields survive untouched.
        assert_eq!(&out[..2], &m[..2]);
        // The two new weights: -1 and -slope, one [C, 1, 1, 1] filter per channel.
        let weights: Vec<FloatTensor> = parse(&graph(&out))
            .expect("graph fields")
            .into_iter()
            .filter_map(|f| match (f.number, f.value) {
                (5, Value::Bytes(t)) => float_tensor(t).expect("tensor"),
                _ => None,
            })
            .collect();
        // The old slope, now read by nothing, is gone.
        assert_eq!(weights.len(), 2, "only the two new weights remain");
        assert!(weights.iter().all(|t| t.name.contains("facegroup_prelu")));
        assert!(weights.iter().all(|t| t.dims == [3, 1, 1, 1]));
        assert_eq!(weights[0].values, [-1.0, -1.0, -1.0]);
        assert_eq!(weights[1].values, [-0.25, 0.8, -1.5]);
    }

    #[test]
    fn slopes_that_are_not_per_channel_are_left_alone() {
        // A rank-1 slope broadcasts along the last axis, not the channels.
        assert!(rewrite_prelu(&model(&[3], &[0.25, 0.5, 0.1]))
            .expect("rewrite")
            .is_none());
        // A slope whose element count does not match its shape.
        assert!(rewrite_prelu(&model(&[4, 1, 1], &[0.25, 0.5]))
            .expect("rewrite")
            .is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(rewrite_prelu(&[0x0A, 0xFF]).is_err());
        assert!(rewrite_prelu(&[0x0B]).is_err());
    }
}
