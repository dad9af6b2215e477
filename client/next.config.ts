import type { NextConfig } from "next";

// A static export: the gateway serves out/admin/backup-recovery.html and out/_next/ itself, so the
// page needs no Node server at run time. No basePath and no trailing slash, as the gateway routes them.
const nextConfig: NextConfig = {
  output: "export",
  trailingSlash: false,
  images: { unoptimized: true },
  reactStrictMode: true,
  poweredByHeader: false,
  devIndicators: false,
};

export default nextConfig;
