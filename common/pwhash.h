/*
 * pwhash — check a password against a crypt(3) hash from the user store
 * (libxcrypt): "$y$" yescrypt, "$6$" sha512-crypt, "$2b$"/"$2y$" bcrypt.
 *
 * Verification costs milliseconds of CPU by design, so it must never run
 * on an event loop: proxy/cryptpool.c runs it on its own threads. This
 * module is pure and thread-safe (no static state).
 */
#ifndef IMAPMUX_PWHASH_H
#define IMAPMUX_PWHASH_H

#include <stdbool.h>
#include <stddef.h>

/*
 * The longest password and hash (bytes, without the NUL) crypt can take:
 * libxcrypt's CRYPT_MAX_PASSPHRASE_SIZE - 1 and CRYPT_OUTPUT_SIZE - 1.
 * Anything longer cannot be verified (-1).
 */
#define PWHASH_PASSWORD_MAX 511
#define PWHASH_HASH_MAX     383

/*
 * True if hash starts with a prefix we verify. Locked or disabled accounts
 * ("*", "!", "!$6$...", "*LK*"), the empty string, NULL and the weak or
 * exotic schemes libxcrypt also knows (DES, MD5, $5$, ...) are not
 * supported: a store that holds them is misconfigured, and a login
 * against them must fail.
 */
bool pwhash_supported(const char *hash);

/*
 * Verify password[0..len) (need not be NUL-terminated; NULL is allowed
 * when len is 0) against hash (NUL-terminated). Returns:
 *    1  the password matches;
 *    0  it does not;
 *   -1  it cannot be checked: hash unsupported (see above) or malformed
 *       (truncated, trailing bytes: anything crypt does not reproduce at
 *       the same length) or longer than PWHASH_HASH_MAX, the password
 *       holds a NUL byte or is longer than PWHASH_PASSWORD_MAX, crypt
 *       failed, or out of memory. A login must be refused; the caller should log
 *       it as a store/configuration problem, not as a wrong password.
 * An empty password is verified like any other; refusing empty
 * passwords is the caller's policy. bcrypt looks at the first 72 bytes
 * only (a property of the algorithm).
 * The comparison takes the same time wherever the strings differ, and
 * every copy of the password is wiped before returning.
 */
__attribute__((warn_unused_result)) int pwhash_verify(const char *password, size_t len,
                                                      const char *hash);

#endif
