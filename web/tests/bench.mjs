// Browser benchmark driver (scripts/web_bench.py runs it): loads the demo page once per
// configuration in headless Chromium and prints one JSON object of measurements.
//
//   node web/tests/bench.mjs PLAN.json
//
// PLAN: {url, text, frames, runs, webgpu, configs: [{name, query, url?}]}. Per configuration: load time
// (page open to "ready"), one warm-up synthesis, then `runs` syntheses of `frames` latents
// (EOS off), each with x realtime, first-chunk latency and the time spent per graph.

import { readFileSync } from "node:fs";
import { launchChromium } from "./browser.mjs";

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
const results = { configs: {}, console: [] };
const { context, close } = await launchChromium({ executablePath: plan.chromium, webgpu: plan.webgpu });

try {
  for (const { name, query, url = plan.url } of plan.configs) {
    const page = await context.newPage();
    page.on("console", (m) => {
      if (m.type() === "error" || m.type() === "warning") results.console.push(`${name}: ${m.text()}`);
    });
    const timeout = plan.timeoutMs ?? 600_000;
    const waitState = (states) =>
      page.waitForFunction((s) => s.includes(window.__state), states, { timeout });
    const opened = performance.now();
    await page.goto(`${url}?bundle=/bundle/&frames=${plan.frames}&${query}`);
    await waitState(["ready", "error"]);
    const loadMs = performance.now() - opened;
    const loadError = await page.evaluate(() => window.__lastError ?? null);
    const model = await page.evaluate(() => window.__model ?? null);
    const entry = { query, loadMs, loadError, runs: [], devices: model?.devices ?? null };
    results.configs[name] = entry;
    if (loadError) {
      await page.close();
      continue;
    }
    await page.fill("#text", plan.text);
    await page.fill("#temperature", "0.3");
    await page.fill("#seed", "1");
    for (let i = 0; i <= plan.runs; i++) {
      await page.click("#play");
      await page.waitForFunction(() => window.__state !== "generating", null, { timeout });
      const run = await page.evaluate(() => ({ stats: window.__stats, error: window.__lastError ?? null }));
      if (i > 0) entry.runs.push(run); // the first run warms up
      if (run.error) break;
    }
    await page.close();
  }
} catch (e) {
  results.failure = String(e?.stack ?? e);
} finally {
  await close();
}
console.log(JSON.stringify(results));
