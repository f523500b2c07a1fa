// Reader for the voice files the Python runtime writes (runtime/voice_file.py): an .npz is a
// zip of .npy arrays (numpy writes them stored, with zip64 extras); metadata is the uint8
// member `__metadata__` holding UTF-8 JSON.

export const METADATA_KEY = "__metadata__";

const DTYPES = {
  "<f4": [Float32Array, "float32"],
  "<f8": [Float64Array, "float64"],
  "<i8": [BigInt64Array, "int64"],
  "<i4": [Int32Array, "int32"],
  "|u1": [Uint8Array, "uint8"],
  "|i1": [Int8Array, "int8"],
};

class NpzError extends Error {}

async function inflateRaw(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// Zip central directory -> [{name, method, offset, size}], reading zip64 extras where the
// 32-bit fields are saturated.
function zipEntries(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let eocd = -1;
  for (let o = bytes.length - 22; o >= Math.max(0, bytes.length - 65557); o--) {
    if (view.getUint32(o, true) === 0x06054b50) {
      eocd = o;
      break;
    }
  }
  if (eocd < 0) throw new NpzError("not a zip archive");
  let count = view.getUint16(eocd + 10, true);
  let dirOffset = view.getUint32(eocd + 16, true);
  const locator = eocd - 20;
  if (locator >= 0 && view.getUint32(locator, true) === 0x07064b50) {
    const eocd64 = Number(view.getBigUint64(locator + 8, true));
    count = Number(view.getBigUint64(eocd64 + 32, true));
    dirOffset = Number(view.getBigUint64(eocd64 + 48, true));
  }
  const decoder = new TextDecoder();
  const entries = [];
  for (let i = 0, o = dirOffset; i < count; i++) {
    if (view.getUint32(o, true) !== 0x02014b50) throw new NpzError("corrupt zip directory");
    const method = view.getUint16(o + 10, true);
    let size = view.getUint32(o + 20, true);
    let rawSize = view.getUint32(o + 24, true);
    const nameLen = view.getUint16(o + 28, true);
    const extraLen = view.getUint16(o + 30, true);
    const commentLen = view.getUint16(o + 32, true);
    let offset = view.getUint32(o + 42, true);
    const name = decoder.decode(bytes.subarray(o + 46, o + 46 + nameLen));
    for (let e = o + 46 + nameLen; e < o + 46 + nameLen + extraLen; ) {
      const id = view.getUint16(e, true);
      const len = view.getUint16(e + 2, true);
      if (id === 0x0001) {
        let p = e + 4;
        const next = () => Number(view.getBigUint64((p += 8) - 8, true));
        if (rawSize === 0xffffffff) rawSize = next();
        if (size === 0xffffffff) size = next();
        if (offset === 0xffffffff) offset = next();
      }
      e += 4 + len;
    }
    entries.push({ name, method, offset, size });
    o += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

function parseNpy(bytes, name) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes[0] !== 0x93 || String.fromCharCode(...bytes.subarray(1, 6)) !== "NUMPY") {
    throw new NpzError(`${name} is not a .npy array`);
  }
  const major = bytes[6];
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || shapeText === undefined) throw new NpzError(`${name} has an unreadable header`);
  if (!DTYPES[descr]) throw new NpzError(`${name} has unsupported dtype ${descr}`);
  if (fortran) throw new NpzError(`${name} is stored in Fortran order`);
  const shape = shapeText.split(",").filter((s) => s.trim() !== "").map((s) => Number(s));
  const [Type, dtype] = DTYPES[descr];
  const n = shape.reduce((a, b) => a * b, 1);
  const body = bytes.slice(start + headerLen, start + headerLen + n * Type.BYTES_PER_ELEMENT);
  if (body.length !== n * Type.BYTES_PER_ELEMENT) throw new NpzError(`${name} is truncated`);
  return { dtype, shape, data: new Type(body.buffer) };
}

/** Parse .npz bytes -> {arrays: {name: {dtype, shape, data}}, metadata: {...}}. */
export async function readNpz(buffer) {
  const bytes = new Uint8Array(buffer);
  const arrays = {};
  let metadata = {};
  for (const entry of zipEntries(bytes)) {
    const view = new DataView(bytes.buffer, bytes.byteOffset + entry.offset);
    if (view.getUint32(0, true) !== 0x04034b50) throw new NpzError("corrupt zip entry");
    const dataStart = entry.offset + 30 + view.getUint16(26, true) + view.getUint16(28, true);
    let member = bytes.subarray(dataStart, dataStart + entry.size);
    if (entry.method === 8) member = await inflateRaw(member);
    else if (entry.method !== 0) throw new NpzError(`unsupported zip compression ${entry.method}`);
    const name = entry.name.replace(/\.npy$/, "");
    const array = parseNpy(member, name);
    if (name === METADATA_KEY) {
      metadata = JSON.parse(new TextDecoder().decode(array.data));
    } else {
      arrays[name] = array;
    }
  }
  return { arrays, metadata };
}

export { NpzError };
