// What both workers (worker.js, decoder-worker.js) do the same way: yield to their message
// queue mid-synthesis, send an audio chunk to the page, and word an error for it.

/** A macrotask break, so that a message posted meanwhile ("stop", a latent) is handled. */
export const breathe = () =>
  new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = resolve;
    channel.port2.postMessage(null);
  });

/** Post a "chunk" message, transferring a copy of `samples`: ORT may still own the original. */
export function sendChunk(id, samples, textChunkIndex, words) {
  const out = samples.slice();
  postMessage({ type: "chunk", id, samples: out, textChunkIndex, words }, [out.buffer]);
}

/** The message an error reaches the page with. */
export function describe(error) {
  return error?.message || String(error);
}
