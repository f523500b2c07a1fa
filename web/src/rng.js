// Seeded normal noise: xoshiro128** seeded through splitmix32, Box–Muller for N(0, 1).
// The Python runtime uses numpy's PCG64, so the two only agree where the noise is zero
// (temperature 0); a seed makes browser runs reproducible among themselves.

function splitmix32(state) {
  return () => {
    state = (state + 0x9e3779b9) | 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
}

export function createRng(seed = null) {
  if (seed === null || seed === undefined) {
    seed = crypto.getRandomValues(new Uint32Array(1))[0];
  }
  // Both 32-bit halves of the seed feed the state, so seeds up to 2^53 stay distinct.
  const mix = splitmix32((seed >>> 0) ^ Math.floor(seed / 2 ** 32));
  const s = Uint32Array.of(mix(), mix(), mix(), mix());
  const rotl = (x, k) => (x << k) | (x >>> (32 - k));
  const next = () => {
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  };
  // Uniform in [0, 1) with 53 random bits.
  const uniform = () => ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992;
  let spare = null;
  return {
    /** Uniform in [0, 1). */
    uniform,
    normal() {
      if (spare !== null) {
        const v = spare;
        spare = null;
        return v;
      }
      const radius = Math.sqrt(-2 * Math.log(1 - uniform()));
      const angle = 2 * Math.PI * uniform();
      spare = radius * Math.sin(angle);
      return radius * Math.cos(angle);
    },
  };
}
