/* leakscan.h: tell leakscan about your program's memory.
 *
 * Include this header and call the functions through the LEAKSCAN_*
 * macros. Every function is declared weak: a program built with it links
 * and runs without libleakscan.so (the macros then do nothing), and under
 * `leakscan run` or LD_PRELOAD=libleakscan.so the calls reach the library.
 * No link flag is needed.
 *
 *   LEAKSCAN_NOT_LEAK(p)   p's block is not a leak, nor anything reachable
 *                          only through it (kmemleak_not_leak; LSan's
 *                          __lsan_ignore_object)
 *   LEAKSCAN_IGNORE(p)     p's block is neither reported nor scanned for
 *                          pointers (kmemleak_ignore)
 *   LEAKSCAN_NO_SCAN(p)    p's block holds no pointers: never scan it, but
 *                          report it if it leaks (kmemleak_no_scan)
 *
 * p may point anywhere inside a live block from malloc and friends.
 *
 * LeakSanitizer's interface (<sanitizer/lsan_interface.h>) works unchanged
 * under leakscan: __lsan_ignore_object, __lsan_disable/__lsan_enable,
 * __lsan_register_root_region/__lsan_unregister_root_region,
 * __lsan_do_leak_check, __lsan_do_recoverable_leak_check. They are
 * declared weak here too, with LEAKSCAN_LSAN_* macros, for programs that
 * do not build with -fsanitize=leak.
 */
#ifndef LEAKSCAN_H
#define LEAKSCAN_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void leakscan_not_leak(const void *p) __attribute__((weak));
void leakscan_ignore(const void *p) __attribute__((weak));
void leakscan_no_scan(const void *p) __attribute__((weak));

void __lsan_ignore_object(const void *p) __attribute__((weak));
void __lsan_disable(void) __attribute__((weak));
void __lsan_enable(void) __attribute__((weak));
void __lsan_register_root_region(const void *p, size_t size) __attribute__((weak));
void __lsan_unregister_root_region(const void *p, size_t size) __attribute__((weak));
void __lsan_do_leak_check(void) __attribute__((weak));
int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

#ifdef __cplusplus
}
#endif

/* Call f(args) if the library is loaded; otherwise do nothing. */
#define LEAKSCAN_CALL_(f, ...) do { if (f) f(__VA_ARGS__); } while (0)

#define LEAKSCAN_NOT_LEAK(p) LEAKSCAN_CALL_(leakscan_not_leak, (p))
#define LEAKSCAN_IGNORE(p) LEAKSCAN_CALL_(leakscan_ignore, (p))
#define LEAKSCAN_NO_SCAN(p) LEAKSCAN_CALL_(leakscan_no_scan, (p))

#define LEAKSCAN_LSAN_IGNORE_OBJECT(p) LEAKSCAN_CALL_(__lsan_ignore_object, (p))
#define LEAKSCAN_LSAN_DISABLE() do { if (__lsan_disable) __lsan_disable(); } while (0)
#define LEAKSCAN_LSAN_ENABLE() do { if (__lsan_enable) __lsan_enable(); } while (0)
#define LEAKSCAN_LSAN_REGISTER_ROOT_REGION(p, n) LEAKSCAN_CALL_(__lsan_register_root_region, (p), (n))
#define LEAKSCAN_LSAN_UNREGISTER_ROOT_REGION(p, n) LEAKSCAN_CALL_(__lsan_unregister_root_region, (p), (n))
/* 0 when the library is not loaded. */
#define LEAKSCAN_LSAN_DO_RECOVERABLE_LEAK_CHECK() \
    (__lsan_do_recoverable_leak_check ? __lsan_do_recoverable_leak_check() : 0)
#define LEAKSCAN_LSAN_DO_LEAK_CHECK() do { if (__lsan_do_leak_check) __lsan_do_leak_check(); } while (0)

#endif
