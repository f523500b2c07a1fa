// Drive the demo page in headless Chromium and print one JSON object of results.
//
//   node web/tests/e2e.mjs PLAN.json
//
// PLAN: {url, precision, outDir, screenshot, text, longText, voices: {name: path},
// namedVoice}. Each synthesis runs at temperature 0; its samples are written to
// outDir/<name>.f32 (raw little-endian float32) for the caller to compare with the Python
// engine. Also records the voice dropdown, unlabelled controls, the layout width at 390 px
// (a phone), what a failed load leaves on the page, and with "Word timestamps" checked the
// word events the page received and the word highlighted while the audio played.

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { launchChromium } from "./browser.mjs";

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
const TIMEOUT = 30_000;
const results = { console: [], runs: {} };

const { context, close } = await launchChromium({
  executablePath: plan.chromium,
  viewport: { width: 900, height: 1000 },
});

try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") results.console.push(`${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => results.console.push(`pageerror: ${e.message}`));

  const waitState = (states) =>
    page.waitForFunction((s) => s.includes(window.__state), states, { timeout: TIMEOUT });

  const openAt = performance.now();
  await page.goto(`${plan.url}?bundle=/bundle/&precision=${plan.precision}`);
  await waitState(["ready", "error"]);
  results.loadMs = performance.now() - openAt;
  results.loadError = await page.evaluate(() => window.__lastError ?? null);
  results.randomWeightsBanner = await page.isVisible("#random-weights");
  results.timestampsEnabled = await page.isEnabled("#timestamps");
  if (results.loadError) throw new Error(`bundle failed to load: ${results.loadError}`);
  results.voiceMenu = await page.evaluate(() => ({
    options: [...document.querySelectorAll("#voice option")].map((o) => o.value),
    selected: document.getElementById("voice").value,
    voice: window.__voice,
  }));
  // Controls a screen reader cannot name.
  results.unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea")]
      .filter((e) => !e.labels?.length)
      .map((e) => e.id),
  );
  results.precisionLabel = await page.evaluate(
    () => document.querySelector('label[for="precision"]')?.textContent ?? null,
  );
  await page.setViewportSize({ width: 390, height: 844 });
  results.phoneWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  await page.screenshot({ path: plan.screenshot.replace(/\.png$/, "-phone.png"), fullPage: true });
  await page.setViewportSize({ width: 900, height: 1000 });

  async function synthesize(name, text, params = { temperature: "0", lsd: null, seed: "" }) {
    await page.fill("#text", text);
    await page.fill("#temperature", params.temperature);
    if (params.lsd !== null) await page.fill("#lsd-steps", params.lsd);
    await page.fill("#seed", params.seed);
    if (await page.isEnabled("#timestamps")) {
      await page.setChecked("#timestamps", Boolean(params.timestamps));
    }
    await page.click("#play");
    let highlight = null;
    if (params.timestamps) {
      // A word must be highlighted while the audio plays.
      highlight = await page
        .waitForFunction(() => document.querySelector("#spoken .word.speaking")?.textContent,
          null, { timeout: TIMEOUT })
        .then((h) => h.jsonValue(), (e) => `no word was highlighted: ${e.message}`);
      await page.screenshot({ path: plan.screenshot.replace(/\.png$/, "-words.png"), fullPage: true });
    }
    await page.waitForFunction(() => window.__state !== "generating", null, { timeout: TIMEOUT });
    const run = await page.evaluate(() => {
      const bytes = window.__lastAudio ? new Uint8Array(window.__lastAudio.buffer) : null;
      let binary = "";
      for (let i = 0; bytes && i < bytes.length; i += 0x8000) {
        binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      }
      return {
        error: window.__lastError ?? null,
        chunks: window.__chunks,
        stats: window.__stats,
        speedText: document.getElementById("stat-speed").textContent,
        firstText: document.getElementById("stat-first").textContent,
        base64: bytes ? btoa(binary) : null,
      };
    });
    if (run.base64 !== null) {
      writeFileSync(join(plan.outDir, `${name}.f32`), Buffer.from(run.base64, "base64"));
    }
    delete run.base64;
    if (params.timestamps) {
      run.highlight = highlight;
      Object.assign(run, await page.evaluate(() => ({
        words: window.__words,
        highlighted: [...window.__highlighted],
        spans: [...document.querySelectorAll("#spoken .word")].map((s) => s.textContent),
      })));
    }
    results.runs[name] = run;
    return run;
  }

  async function useVoice(path) {
    await page.setInputFiles("#voice-file", path);
    // The page switches to "loading" synchronously on change; wait for the worker's answer.
    await waitState(["ready"]);
    return page.evaluate(() => ({ voice: window.__voice, error: window.__lastError ?? null }));
  }

  async function selectVoice(name) {
    await page.selectOption("#voice", name);
    await waitState(["ready"]);
    return page.evaluate(() => ({ voice: window.__voice, error: window.__lastError ?? null }));
  }

  // The comparisons with Python below run without a voice prompt; named voices after.
  await selectVoice("");
  await synthesize("default", plan.text);
  await page.screenshot({ path: plan.screenshot, fullPage: true });
  await synthesize("long", plan.longText);
  const withWords = { temperature: "0", lsd: null, seed: "", timestamps: true };
  await synthesize("timestamps", plan.longText, withWords);
  // Non-zero temperature and several LSD steps: exercises the noise and solver paths.
  await synthesize("sampled", plan.text, { temperature: "0.7", lsd: "3", seed: "7" });
  await page.fill("#lsd-steps", "1");

  results.voices = {};
  for (const [name, path] of Object.entries(plan.voices)) {
    results.voices[name] = await useVoice(path);
    await synthesize(`voice_${name}`, plan.text);
  }
  if (plan.namedVoice) {
    results.named = await selectVoice(plan.namedVoice);
    await synthesize("voice_named", plan.text);
  }

  // Readable errors: empty text, then a bundle URL that does not exist.
  await synthesize("empty", "   ");
  await page.fill("#bundle-url", "/no-such-bundle/");
  await page.click("#load");
  await waitState(["error"]);
  results.badBundle = {
    error: await page.evaluate(() => window.__lastError),
    visible: await page.isVisible("#error"),
    // Nothing of the previous bundle's voice may survive a failed load.
    voice: await page.evaluate(() => window.__voice),
    voiceStatus: await page.textContent("#voice-status"),
    voiceOptions: await page.evaluate(() => document.querySelectorAll("#voice option").length),
    playDisabled: await page.isDisabled("#play"),
  };
  await page.screenshot({ path: plan.screenshot.replace(/\.png$/, "-error.png"), fullPage: true });
} catch (e) {
  results.failure = String(e?.stack ?? e);
} finally {
  await close();
}
console.log(JSON.stringify(results));
