// The demo page's word highlighting: the text as spoken, one span per word, and the word
// being spoken highlighted on the playback clock. Word events give times in seconds of the
// stream's audio; each chunk plays where the player scheduled it, so a late chunk shifts the
// words in it. For automated tests it keeps window.__words (the word events received) and
// window.__highlighted (indices of the words highlighted).

import { sourceWords } from "./word-units.js";

export class WordHighlight {
  /** `element` shows the text; `player` (player.js) gives the clock and the playhead. */
  constructor(element, player) {
    this.element = element;
    this.player = player;
    this._reading = null; // the text being highlighted: {id, spans, times, segments}
  }

  /** Forget the last synthesis's words and hide the text. */
  reset() {
    this.stop();
    window.__words = [];
    window.__highlighted = new Set();
    this.element.hidden = true;
  }

  /** Show `text` and highlight its words while `running()` or its audio plays. */
  start(id, text, running) {
    this._reading = { id, spans: this._show(text), times: [], segments: [] };
    requestAnimationFrame(() => this._highlight(id, running));
  }

  /** Audio of the stream from `stream` seconds on starts at `at` on the player's clock. */
  placed(stream, at) {
    this._reading?.segments.push({ stream, at });
  }

  /** Take in word events ({index, start, end}, times in seconds of the stream). */
  add(words) {
    if (!this._reading || !words?.length) return;
    for (const w of words) {
      window.__words.push(w);
      const times = (this._reading.times[w.index] ??= { start: null, end: null });
      times.start = this._onClock(w.start);
      if (w.end !== null) times.end = this._onClock(w.end);
    }
  }

  stop() {
    this._reading?.spans.forEach((span) => span.classList.remove("speaking"));
    this._reading = null;
  }

  // One span per word (word-units.js finds the words the events index).
  _show(text) {
    const spans = [];
    const nodes = [];
    let pos = 0;
    for (const w of sourceWords(text)) {
      nodes.push(document.createTextNode(text.slice(pos, w.begin)));
      const span = document.createElement("span");
      span.className = "word";
      span.textContent = w.text;
      spans.push(span);
      nodes.push(span);
      pos = w.end;
    }
    nodes.push(document.createTextNode(text.slice(pos)));
    this.element.replaceChildren(...nodes);
    this.element.hidden = false;
    return spans;
  }

  // A time of the stream (seconds of its audio) on the player's clock.
  _onClock(t) {
    const { segments } = this._reading;
    let segment = segments[0];
    for (const s of segments) if (s.stream <= t + 1e-9) segment = s;
    return segment ? segment.at + (t - segment.stream) : null;
  }

  // Highlight the words whose [start, end) holds the playback time, until playback ends.
  _highlight(id, running) {
    const reading = this._reading;
    if (!reading || reading.id !== id) return;
    const now = this.player.now();
    reading.spans.forEach((span, i) => {
      const t = reading.times[i];
      const started = Boolean(t && t.start !== null && t.start <= now);
      const on = started && (t.end === null || now < t.end);
      span.classList.toggle("speaking", on);
      if (on) window.__highlighted.add(i);
    });
    if (running() || now < this.player.playhead) {
      requestAnimationFrame(() => this._highlight(id, running));
    } else {
      reading.spans.forEach((span) => span.classList.remove("speaking"));
    }
  }
}
