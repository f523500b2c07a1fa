// Headless Debian Chromium for the page drivers (e2e, bench, webgpu): a fresh profile, and
// the flags this closed network needs (no background connections, no component updates).
// `webgpu` swaps --disable-gpu for SwiftShader, Chromium's CPU WebGPU adapter.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

export async function launchChromium({ executablePath, webgpu = false, viewport } = {}) {
  const profile = mkdtempSync(join(tmpdir(), "pocket-tts-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: executablePath ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      ...(webgpu ? ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"] : ["--disable-gpu"]),
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--mute-audio",
    ],
    ...(viewport ? { viewport } : {}),
  });
  const close = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}
