/*
 * pwhash — see pwhash.h.
 *
 *   password[0..len) --copy--> cd->input  (NUL-terminated)
 *   hash             --copy--> cd->setting
 *   crypt_rn(cd->input, cd->setting, cd) --> cd->output
 *   cd->output == hash ?  (same length, then every byte, no early exit)
 *   explicit_bzero(cd); free(cd)
 *
 * Invariants:
 *  - Every copy of the password lives in one heap struct crypt_data (32 KiB:
 *    not for a stack frame), which is wiped on every path out. libxcrypt
 *    erases its own scratch space itself.
 *  - crypt(hash-as-setting) reproduces a well-formed hash exactly for the
 *    right password, and a string of the same length for any other one.
 *    So a result of another length means the stored string is not a hash
 *    any password could match (truncated, trailing newline, ...): -1, not 0.
 *  - Lengths are not secret (they depend on the hash alone). How many
 *    leading bytes match would be an oracle for guessing, so the bytes are
 *    compared with an accumulator and no early exit.
 */
#include "pwhash.h"

#include <crypt.h>
#include <stdlib.h>
#include <string.h>

/* "$2y$" is bcrypt as PHP and htpasswd write it; libxcrypt computes it exactly like "$2b$". */
static const char *const pwhash_prefixes[] = {"$y$", "$6$", "$2b$", "$2y$"};

_Static_assert(PWHASH_PASSWORD_MAX == CRYPT_MAX_PASSPHRASE_SIZE - 1, "pwhash.h vs crypt.h");
_Static_assert(PWHASH_HASH_MAX == CRYPT_OUTPUT_SIZE - 1, "pwhash.h vs crypt.h");

#define PWHASH_NPREFIXES (sizeof(pwhash_prefixes) / sizeof(pwhash_prefixes[0]))

bool pwhash_supported(const char *hash)
{
	if (hash == NULL)
		return false;
	for (size_t i = 0; i < PWHASH_NPREFIXES; i++) {
		if (strncmp(hash, pwhash_prefixes[i], strlen(pwhash_prefixes[i])) == 0)
			return true;
	}
	return false;
}

/*
 * 1 if a[0..n) == b[0..n). The volatile accumulator keeps the compiler from
 * turning the loop into an early-exit compare.
 */
static int pwhash_equal(const char *a, const char *b, size_t n)
{
	volatile unsigned char diff = 0;

	for (size_t i = 0; i < n; i++)
		diff |= (unsigned char)a[i] ^ (unsigned char)b[i];
	return diff == 0;
}

int pwhash_verify(const char *password, size_t len, const char *hash)
{
	struct crypt_data *cd = NULL;
	const char *computed;
	size_t hash_len;
	int ret = -1;

	if (!pwhash_supported(hash))
		goto out;
	if (password == NULL && len > 0)
		goto out;
	/* crypt takes a C string: a NUL inside would silently shorten the password. */
	if (len > PWHASH_PASSWORD_MAX || (len > 0 && memchr(password, '\0', len) != NULL))
		goto out;
	hash_len = strnlen(hash, PWHASH_HASH_MAX + 1);
	if (hash_len > PWHASH_HASH_MAX)
		goto out;

	/* Zeroed, as libxcrypt asks of a fresh struct crypt_data ("initialized", "reserved"). */
	cd = calloc(1, sizeof(*cd));
	if (cd == NULL)
		goto out;
	if (len > 0)
		memcpy(cd->input, password, len);
	cd->input[len] = '\0';
	memcpy(cd->setting, hash, hash_len + 1);

	/* NULL on failure (unknown or malformed setting, ...), never a "*0" token. */
	computed = crypt_rn(cd->input, cd->setting, cd, (int)sizeof(*cd));
	if (computed == NULL)
		goto out;
	if (strnlen(computed, CRYPT_OUTPUT_SIZE) != hash_len)
		goto out;
	ret = pwhash_equal(computed, hash, hash_len);
out:
	if (cd != NULL) {
		explicit_bzero(cd, sizeof(*cd));
		free(cd);
	}
	return ret;
}
