// The kernels of one module as the emulated driver (driver.cpp) launches them: a kernel's
// parameter types come from its C++ signature (emu_kernel deduces them), so cuLaunchKernel's
// `void** params` are unpacked as the GPU would read them, and a graph capture copies each
// parameter by its size.
#pragma once
#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

struct EmuKernel {
    const char* name;
    void* fn;
    void (*call)(void* fn, void** params);  // one CUDA thread's run of the kernel
    std::vector<size_t> param_sizes;
};
// driver.cpp: makes the module's kernels known to cuModuleGetFunction.
void emu_register_module(const char* module, const EmuKernel* kernels, size_t n);

template <class... A, size_t... I>
void emu_call_impl(void* fn, void** p, std::index_sequence<I...>) {
    reinterpret_cast<void (*)(A...)>(fn)(*static_cast<std::remove_cv_t<A>*>(p[I])...);
}
template <class... A>
EmuKernel emu_kernel(const char* name, void (*f)(A...)) {
    return {name, reinterpret_cast<void*>(f),
            [](void* fn, void** p) { emu_call_impl<A...>(fn, p, std::index_sequence_for<A...>{}); },
            {sizeof(std::remove_cv_t<A>)...}};
}
struct EmuModuleRegistrar {
    EmuModuleRegistrar(const char* module, const EmuKernel* kernels, size_t n) { emu_register_module(module, kernels, n); }
};
