// The demo page's audio output: Web Audio at the model's rate (the browser resamples to the
// device), chunks scheduled one after the other as they arrive. Playback is best effort:
// without an audio device synthesis still runs and can be downloaded, and now() is the wall
// clock instead.

export class Player {
  constructor() {
    this._context = null;
    /** When the audio scheduled so far ends, on now(). */
    this.playhead = 0;
  }

  /** Get ready to play a new synthesis at `sampleRate`. */
  start(sampleRate) {
    try {
      if (!this._context || this._context.sampleRate !== sampleRate) {
        this._context?.close();
        this._context = new AudioContext({ sampleRate });
      }
      this._context.resume();
    } catch (e) {
      this._context = null;
      console.warn("audio playback unavailable:", e);
    }
    this.playhead = this.now() + 0.05;
  }

  /** The playback clock, in seconds. */
  now() {
    return this._context ? this._context.currentTime : performance.now() / 1000;
  }

  /** Play `samples` after what is scheduled; returns when they start, on now(). */
  schedule(samples, sampleRate) {
    // Never schedule in the past: a late chunk starts now (an audible gap, not a skip).
    this.playhead = Math.max(this.playhead, this.now() + 0.02);
    const at = this.playhead;
    this.playhead += samples.length / sampleRate;
    if (this._context) {
      const buffer = this._context.createBuffer(1, samples.length, sampleRate);
      buffer.copyToChannel(samples, 0);
      const source = this._context.createBufferSource();
      source.buffer = buffer;
      source.connect(this._context.destination);
      source.start(at);
    }
    return at;
  }

  /** Silence what is scheduled (a stopped synthesis). */
  suspend() {
    this._context?.suspend();
  }
}
