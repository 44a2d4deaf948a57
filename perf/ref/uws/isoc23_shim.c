/*
 * isoc23_shim.c - provide the three glibc 2.38 "ISO C23" entry points that the
 * prebuilt uWebSockets.js addon references, on top of an older glibc (2.36).
 *
 * glibc 2.38 redirects sscanf/strtol/strtoul to __isoc23_* when compiling in
 * C2x/_GNU_SOURCE mode.  The only semantic difference from the classic
 * functions is C23 binary-literal support ("0b101" prefix for base 0/2 in
 * strtol/strtoul, and the %b conversion in scanf).  uWS uses these for plain
 * decimal/hex parsing, so forwarding to the C99 functions is sufficient.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

int __isoc23_sscanf(const char *restrict s, const char *restrict fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vsscanf(s, fmt, ap);
    va_end(ap);
    return r;
}

long __isoc23_strtol(const char *restrict nptr, char **restrict endptr, int base)
{
    return strtol(nptr, endptr, base);
}

unsigned long __isoc23_strtoul(const char *restrict nptr, char **restrict endptr, int base)
{
    return strtoul(nptr, endptr, base);
}
