/*
 * base64 — RFC 4648 base64, strict, as SASL (RFC 4422) and IMAP AUTHENTICATE
 * (RFC 3501 section 6.2.2) use it: no line breaks, padding required.
 */
#ifndef IMAPMUX_BASE64_H
#define IMAPMUX_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Bytes needed to encode n bytes, without the terminating NUL. */
#define B64_ENCODED_LEN(n) ((((n) + 2) / 3) * 4)

/*
 * Encode in[0..n) into out, NUL-terminated. Returns the encoded length, or
 * -1 if outcap is smaller than B64_ENCODED_LEN(n) + 1.
 */
__attribute__((warn_unused_result)) long b64_encode(const uint8_t *in, size_t n, char *out,
                                                    size_t outcap);

/*
 * Decode in[0..n) into out. Returns 0 with *outlen_r set; -1 on any
 * character outside the alphabet, bad padding, a length not a multiple of
 * 4, non-zero trailing bits, or an output larger than outcap.
 */
__attribute__((warn_unused_result)) int b64_decode(const char *in, size_t n, uint8_t *out,
                                                   size_t outcap, size_t *outlen_r);

#endif
