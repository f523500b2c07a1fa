// The page with page options (default ?device=webgpu, in headless Chromium on SwiftShader:
// Chromium's CPU emulation of a GPU, the only WebGPU adapter a GPU-less machine has).
// Synthesizes one text at temperature 0 without a voice and writes the samples for the
// caller to compare.
//
//   node web/tests/webgpu.mjs PLAN.json    PLAN: {url, precision, text, out, query?}
// Prints {devices, error, samples, stats}.

import { readFileSync, writeFileSync } from "node:fs";
import { launchChromium } from "./browser.mjs";

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
const query = plan.query ?? "device=webgpu";
const webgpu = query.includes("device=webgpu");
const { context, close } = await launchChromium({ executablePath: plan.chromium, webgpu });
const result = {};
try {
  const page = context.pages()[0] ?? (await context.newPage());
  const timeout = 120_000;
  await page.goto(`${plan.url}?bundle=/bundle/&precision=${plan.precision}&${query}`);
  await page.waitForFunction(() => ["ready", "error"].includes(window.__state), null, { timeout });
  result.devices = await page.evaluate(() => window.__model?.devices ?? null);
  await page.selectOption("#voice", "");
  await page.waitForFunction(() => window.__state === "ready", null, { timeout });
  await page.fill("#text", plan.text);
  await page.fill("#temperature", "0");
  await page.click("#play");
  await page.waitForFunction(() => window.__state !== "generating", null, { timeout });
  const run = await page.evaluate(() => {
    const bytes = window.__lastAudio ? new Uint8Array(window.__lastAudio.buffer) : new Uint8Array(0);
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    }
    return { error: window.__lastError ?? null, stats: window.__stats, base64: btoa(binary) };
  });
  writeFileSync(plan.out, Buffer.from(run.base64, "base64"));
  result.error = run.error;
  result.stats = run.stats;
} catch (e) {
  result.failure = String(e?.stack ?? e);
} finally {
  await close();
}
console.log(JSON.stringify(result));
