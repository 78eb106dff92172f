// The admin dashboard at /dashboard in headless Chromium against a real control plane and
// a real registered game server: token prompt, refused token, servers, queues, matches, JWKS.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { launchChromium, newPage, screenshot } from "./browser.mjs";
import { ADMIN_TOKEN, api, enqueueSolo, startPlanes } from "./planes.mjs";

// 3v3 needs six solo tickets: two can wait forever, six form a match.
const QUEUE = "hero-defense:3v3";
// The page polls every 2 s; leave room for several rounds and a heartbeat or two.
const UI_TIMEOUT_MS = 15_000;

let planes;
let browser;

before(async () => {
  planes = await startPlanes({ serverId: "gs-browser-dashboard" });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await planes?.stop();
});

/** Polls the text of `locator` until `accept(text)` holds; fails with the last text seen. */
async function waitForText(locator, accept, what, timeoutMs = UI_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last = "(not on the page)";
  for (;;) {
    if ((await locator.count()) > 0) {
      last = (await locator.first().textContent())?.trim() ?? "";
      if (accept(last)) return last;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last text: ${JSON.stringify(last)}`);
    await new Promise((resolveSleep) => setTimeout(resolveSleep, 100));
  }
}

test("dashboard: token prompt, servers, queue counts, recent matches and JWKS kids", async () => {
  const base = planes.controlPlane.http;
  const { context, page, pageErrors, consoleErrors } = await newPage(browser);
  try {
    await page.goto(`${base}/dashboard`);

    // No token yet: the prompt, and nothing of the board.
    await page.locator('[data-testid="login"]').waitFor({ state: "visible" });
    assert.equal(await page.locator('[data-testid="board"]').isVisible(), false);

    // A wrong token is refused by the admin API and the page says so, back at the prompt.
    await page.locator('[data-testid="token-input"]').fill("not-the-admin-token");
    await page.locator('[data-testid="token-submit"]').click();
    const tokenError = page.locator('[data-testid="token-error"]');
    await tokenError.waitFor({ state: "visible", timeout: UI_TIMEOUT_MS });
    const refusal = await tokenError.textContent();
    assert.match(refusal, /refused/i);
    assert.match(refusal, /401|UNAUTHENTICATED/);
    assert.equal(await page.locator('[data-testid="board"]').isVisible(), false);
    await screenshot(page, "dashboard-token-refused");

    // The right token opens the board, with the registered game server in the table.
    await page.locator('[data-testid="token-input"]').fill(ADMIN_TOKEN);
    await page.locator('[data-testid="token-submit"]').click();
    await page.locator('[data-testid="board"]').waitFor({ state: "visible", timeout: UI_TIMEOUT_MS });
    assert.equal(await tokenError.isVisible(), false);
    const serverRow = page.locator(`tr[data-testid="server-row"][data-server-id="${planes.serverId}"]`);
    await serverRow.waitFor({ state: "visible", timeout: UI_TIMEOUT_MS });
    assert.equal((await serverRow.locator('[data-testid="server-state"]').textContent()).trim(), "live");

    // The JWKS lists at least the key the control plane signs with.
    const kids = page.locator('li[data-testid="jwks-kid"]');
    await kids.first().waitFor({ state: "visible", timeout: UI_TIMEOUT_MS });
    const { json: jwks } = await api(base, "/.well-known/jwks.json", { token: null });
    const servedKids = jwks.keys.map((key) => key.kid).sort();
    assert.ok(servedKids.length > 0);
    const shownKids = (await kids.evaluateAll((items) => items.map((item) => item.dataset.kid))).sort();
    assert.deepEqual(shownKids, servedKids);

    // Two solo tickets in a 3v3 queue wait: the queue card shows them.
    for (const player of ["alice", "bob"]) await enqueueSolo(base, QUEUE, player);
    const card = page.locator(`article[data-testid="queue-card"][data-queue="${QUEUE}"]`);
    const queued = card.locator('[data-testid="queue-queued"]');
    await waitForText(queued, (text) => text === "2", `${QUEUE} queued = 2`);
    assert.equal(await page.locator('li[data-testid="recent-match"]').count(), 0);

    // Four more make six: a match forms, the queue empties, the match is listed.
    for (const player of ["carol", "dave", "erin", "frank"]) await enqueueSolo(base, QUEUE, player);
    const recentMatch = page.locator('li[data-testid="recent-match"]');
    await recentMatch.first().waitFor({ state: "visible", timeout: UI_TIMEOUT_MS });
    await waitForText(queued, (text) => Number(text) < 2, `${QUEUE} queued below 2 after the match`);
    const matchText = await recentMatch.first().textContent();
    assert.ok(matchText.includes(QUEUE), `recent match names its queue: ${matchText}`);
    assert.ok(matchText.includes(planes.serverId), `recent match names its server: ${matchText}`);
    for (const player of ["alice", "bob", "carol", "dave", "erin", "frank"]) {
      assert.ok(matchText.includes(player), `recent match lists ${player}: ${matchText}`);
    }

    // Two newcomers wait again, so the picture shows a server, a waiting queue and a match.
    for (const player of ["grace", "heidi"]) await enqueueSolo(base, QUEUE, player);
    await waitForText(queued, (text) => text === "2", `${QUEUE} queued = 2 again`);
    assert.match(
      await page.locator('[data-testid="status"]').textContent(),
      /^updated .* every 2 s$/,
      "every admin request of the last refresh succeeded",
    );
    await screenshot(page, "dashboard");

    assert.deepEqual(pageErrors.map(String), [], "the page threw no error");
    // The refused token's 401s are logged by Chromium as failed loads, and so is its own
    // request for /favicon.ico, which the control plane does not serve; nothing else may be.
    const unexpected = consoleErrors.filter(
      (text) => !/status of 401/.test(text) && !/status of 404 .*\/favicon\.ico\)$/.test(text),
    );
    assert.deepEqual(unexpected, [], "no console error (e.g. a content-security-policy refusal)");
  } finally {
    await context.close();
  }
});
