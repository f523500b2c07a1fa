// SentencePiece .model files: the ModelProto protobuf (sentencepiece_model.proto) read into a
// plain object, only the fields sentencepiece.js uses: the pieces (text, score, type), the
// trainer's model type, byte fallback, whitespace-as-suffix and unknown surface, the
// normalizer's precompiled charsmap and whitespace options, and whether denormalization rules
// are present. Field numbers are the proto's.

/** ModelProto.SentencePiece.Type. */
export const TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 };
/** TrainerSpec.ModelType.UNIGRAM. */
export const UNIGRAM = 1;

const fromUtf8 = new TextDecoder();

function* fields(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  const varint = () => {
    let value = 0;
    let scale = 1;
    for (;;) {
      const b = bytes[pos++];
      if (b === undefined) throw new Error("truncated protobuf");
      value += (b & 0x7f) * scale;
      if (b < 0x80) return value;
      scale *= 128;
    }
  };
  while (pos < bytes.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (wire === 0) yield { field, value: varint() };
    else if (wire === 1) pos += 8;
    else if (wire === 2) {
      const len = varint();
      yield { field, bytes: bytes.subarray(pos, pos + len) };
      pos += len;
    } else if (wire === 5) {
      yield { field, float: view.getFloat32(pos, true) };
      pos += 4;
    } else throw new Error(`unsupported protobuf wire type ${wire}`);
  }
}

/** The fields of a .model file this implementation reads, with the library's defaults. */
export function parseModel(bytes) {
  const model = {
    pieces: [],
    modelType: UNIGRAM,
    byteFallback: false,
    wsSuffix: false,
    unkSurface: " \u2047 ",
    charsmap: null,
    addDummyPrefix: true,
    removeExtraWhitespaces: true,
    escapeWhitespaces: true,
    denormalizes: false,
  };
  for (const f of fields(bytes)) {
    if (f.field === 1) {
      const piece = { piece: "", score: 0, type: TYPE.NORMAL };
      for (const p of fields(f.bytes)) {
        if (p.field === 1) piece.piece = fromUtf8.decode(p.bytes);
        else if (p.field === 2) piece.score = p.float;
        else if (p.field === 3) piece.type = p.value;
      }
      model.pieces.push(piece);
    } else if (f.field === 2) {
      for (const t of fields(f.bytes)) {
        if (t.field === 3) model.modelType = t.value;
        else if (t.field === 35) model.byteFallback = t.value !== 0;
        else if (t.field === 24) model.wsSuffix = t.value !== 0;
        else if (t.field === 44) model.unkSurface = fromUtf8.decode(t.bytes);
      }
    } else if (f.field === 3) {
      for (const n of fields(f.bytes)) {
        if (n.field === 2) model.charsmap = n.bytes.length ? n.bytes : null;
        else if (n.field === 3) model.addDummyPrefix = n.value !== 0;
        else if (n.field === 4) model.removeExtraWhitespaces = n.value !== 0;
        else if (n.field === 5) model.escapeWhitespaces = n.value !== 0;
      }
    } else if (f.field === 5) {
      for (const n of fields(f.bytes)) if (n.field === 2 && n.bytes.length) model.denormalizes = true;
    }
  }
  return model;
}
