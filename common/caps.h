/*
 * caps — IMAP capability lists (space-separated atoms, RFC 3501 7.2.1).
 *
 * The proxy hands clients the backend's capabilities less what it does not
 * carry: STARTTLS, LOGINDISABLED, AUTH=*, SASL-IR (login belongs to the
 * proxy), COMPRESS=* (the proxy parses the stream, so it cannot be
 * compressed end to end) and UNAUTHENTICATE (the proxy owns the
 * not-authenticated state). Matching is case-insensitive.
 */
#ifndef IMAPMUX_CAPS_H
#define IMAPMUX_CAPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest capability list (bytes) the proxy takes from a backend. A longer
 * one fails the login (NO [UNAVAILABLE]) and, in a session, closes it: a
 * list it cannot hold whole, it cannot filter. Real lists are well under
 * 1 KiB. */
#define CAPS_MAX 8192

/* True if capability atom cap[0..len) is one the proxy never passes on. */
bool caps_is_hidden(const char *cap, size_t len);

/*
 * Copy the list in[0..inlen) into out (NUL-terminated) without the hidden
 * capabilities, single-space separated, order kept. Returns the output
 * length, or -1 if out is too small.
 */
__attribute__((warn_unused_result)) long caps_filter(const char *in, size_t inlen, char *out,
                                                     size_t outcap);

/* True if list[0..len) contains capability cap (case-insensitive, whole atoms). */
bool caps_has(const char *list, size_t len, const char *cap);

/* The largest non-synchronizing literal LITERAL- allows (RFC 7888 section 4;
 * IMAP4rev2 servers take the same, RFC 9051 section 4.3). */
#define CAPS_LITERAL_MINUS_MAX 4096

/*
 * May a command carry a non-synchronizing literal ({n+}) of size bytes to a
 * server with capability list list[0..len)? LITERAL+: any size; LITERAL- or
 * IMAP4rev2: up to CAPS_LITERAL_MINUS_MAX; neither: none.
 */
bool caps_nonsync_ok(const char *list, size_t len, uint64_t size);

/*
 * The answer (after the tag) to a command with such a literal the server
 * does not allow, or NULL when caps_nonsync_ok(): "BAD [TOOBIG] ..." where
 * the server has the LITERAL- bound (RFC 7888 section 4), a plain "BAD ..."
 * where it offers no non-synchronizing literals at all.
 */
const char *caps_nonsync_refusal(const char *list, size_t len, uint64_t size);

#endif
