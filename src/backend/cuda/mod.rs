//! CUDA runtime: context, module cache, allocator, launches.
