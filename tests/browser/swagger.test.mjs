// Swagger UI at /api in headless Chromium: it renders every operation of /openapi.json from
// assets served by the control plane itself, nothing fetched from another host.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { launchChromium, newPage, screenshot } from "./browser.mjs";
import { api, startControlPlane } from "./planes.mjs";

const HTTP_METHODS = new Set(["get", "put", "post", "delete", "options", "head", "patch", "trace"]);

let controlPlane;
let browser;

before(async () => {
  controlPlane = await startControlPlane();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await controlPlane?.stop();
});

test("swagger UI at /api renders every operation of /openapi.json from the control plane alone", async () => {
  const base = controlPlane.http;
  const { status, json: description } = await api(base, "/openapi.json", { token: null });
  assert.equal(status, 200);
  assert.match(description.openapi, /^3\.1\./);
  const paths = Object.keys(description.paths);
  const operations = paths.flatMap((path) =>
    Object.keys(description.paths[path])
      .filter((method) => HTTP_METHODS.has(method))
      .map((method) => ({ method, path })),
  );
  assert.ok(paths.includes("/v1/matchmaking/enqueue"), "the document describes enqueue");

  const { context, page, pageErrors, consoleErrors } = await newPage(browser);
  const origin = new URL(base).origin;
  const requests = [];
  page.on("request", (request) => requests.push(request.url()));
  try {
    const response = await page.goto(`${base}/api`);
    assert.equal(response.status(), 200);
    assert.equal(new URL(page.url()).pathname, "/api/", "/api redirects to api/");

    // Swagger UI draws one .opblock per operation once it has loaded the document.
    const opblocks = page.locator(".opblock");
    await page.waitForFunction(
      (expected) => document.querySelectorAll(".opblock").length >= expected,
      operations.length,
      { timeout: 20_000 },
    );
    assert.ok((await opblocks.count()) >= paths.length, "at least one operation per path");
    assert.equal(await opblocks.count(), operations.length, "one block per operation");
    for (const { method, path } of operations) {
      const block = page.locator(`.opblock.opblock-${method}`).filter({
        has: page.locator(`.opblock-summary-path[data-path="${path}"]`),
      });
      assert.equal(await block.count(), 1, `${method.toUpperCase()} ${path} is rendered`);
    }
    const enqueue = page
      .locator(".opblock.opblock-post")
      .filter({ has: page.locator('.opblock-summary-path[data-path="/v1/matchmaking/enqueue"]') });
    assert.ok(await enqueue.isVisible(), "POST /v1/matchmaking/enqueue is visible");

    // The UI offers the security schemes of the document.
    assert.ok(await page.locator(".btn.authorize").isVisible(), "the Authorize button is shown");

    await screenshot(page, "swagger");

    const foreign = requests.filter((url) => !url.startsWith(`${origin}/`) && !url.startsWith("data:"));
    assert.deepEqual(foreign, [], "every request of the page went to the control plane");
    assert.ok(requests.some((url) => url === `${origin}/openapi.json`), "the UI loaded ../openapi.json");
    assert.deepEqual(pageErrors.map(String), [], "the page threw no error");
    assert.deepEqual(consoleErrors, [], "no console error");
  } finally {
    await context.close();
  }
});
