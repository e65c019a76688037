/*
 * pwhash — check a password against a crypt(3) hash from the user store
 * (libxcrypt): "$y$" yescrypt, "$6$" sha512-crypt, "$2b$"/"$2y$" bcrypt.
 *
 * Verification costs milliseconds of CPU by design, so it must never run
 * on an event loop: proxy/cryptpool.c runs it on its own threads. This
 * module is pure and thread-safe (no static state).
 *
 * For logins that have no hash to check (unknown user), pwhash_dummy spends
 * what a verification costs, against a setting (scheme, cost and salt, no
 * hash) taken from a real hash by pwhash_setting or made fresh by
 * pwhash_default_setting: timing then does not tell which users exist.
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

/*
 * Copy the setting of hash (the part crypt(3) reads for scheme, cost and
 * salt: for "$y$", "$6$", "$5$" and "$1$" everything up to and including
 * the last '$'; for "$2a$", "$2b$" and "$2y$" the first 29 bytes) to
 * setting_r, NUL-terminated. Nothing of the hash proper is copied.
 * Returns 0, or -1 (setting_r untouched) if hash is NULL, of another
 * scheme, has no setting longer than its prefix, or the setting and its NUL
 * do not fit in size bytes. Purely syntactic: whether crypt accepts the
 * setting is not checked.
 */
__attribute__((warn_unused_result)) int pwhash_setting(const char *hash, char *setting_r,
                                                       size_t size);

/*
 * A fresh setting of libxcrypt's default scheme at its default cost (what
 * crypt_gensalt(NULL, 0, ...) gives: yescrypt on Debian 12), random salt,
 * into setting_r (size >= PWHASH_SETTING_SIZE). Returns 0, or -1 with errno
 * set (ERANGE: size too small; else crypt_gensalt's).
 */
#define PWHASH_SETTING_SIZE 192 /* CRYPT_GENSALT_OUTPUT_SIZE */
__attribute__((warn_unused_result)) int pwhash_default_setting(char *setting_r, size_t size);

/*
 * Hash password[0..len) with setting (NUL-terminated, e.g. from
 * pwhash_setting) and throw the result away: the cost of a verification
 * against a hash of that setting, for a login that has nothing to verify.
 * A password crypt cannot take (NUL inside, longer than
 * PWHASH_PASSWORD_MAX, NULL with len > 0) is hashed as the empty string, so
 * that the cost is spent all the same. Returns 0 (never "match": there is
 * nothing to match), or -1 if crypt could not run (setting unsupported or
 * malformed, longer than PWHASH_HASH_MAX, out of memory). Every copy of
 * the password is wiped before returning.
 */
__attribute__((warn_unused_result)) int pwhash_dummy(const char *password, size_t len,
                                                     const char *setting);

#endif
