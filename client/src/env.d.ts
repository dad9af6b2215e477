// Next's ambient types (CSS modules, images) for `tsc --noEmit` on a fresh clone, before `next build`
// has written next-env.d.ts (which is not committed, as Next recommends).
/// <reference types="next" />
/// <reference types="next/image-types/global" />
