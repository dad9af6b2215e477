import { defineConfig } from "vitest/config";

// Component and library tests: jsdom, Testing Library, and `fetch` stubbed per test (tests/unit/gateway.ts).
// The end-to-end spec (e2e/) runs with Playwright against a live system instead.
export default defineConfig({
  test: {
    environment: "jsdom",
    globals: true,
    setupFiles: ["./tests/setup.ts"],
    include: ["tests/unit/**/*.test.{ts,tsx}"],
    restoreMocks: true,
    unstubGlobals: true,
    css: { modules: { classNameStrategy: "non-scoped" } },
  },
});
