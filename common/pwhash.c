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
 *  - pwhash_dummy runs the same crypt_rn on a setting instead of a hash and
 *    compares nothing: its cost is a verification's, its answer never 1.
 */
#include "pwhash.h"

#include <crypt.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* "$2y$" is bcrypt as PHP and htpasswd write it; libxcrypt computes it exactly like "$2b$". */
static const char *const pwhash_prefixes[] = {"$y$", "$6$", "$2b$", "$2y$"};

_Static_assert(PWHASH_PASSWORD_MAX == CRYPT_MAX_PASSPHRASE_SIZE - 1, "pwhash.h vs crypt.h");
_Static_assert(PWHASH_HASH_MAX == CRYPT_OUTPUT_SIZE - 1, "pwhash.h vs crypt.h");

_Static_assert(PWHASH_SETTING_SIZE == CRYPT_GENSALT_OUTPUT_SIZE, "pwhash.h vs crypt.h");

#define PWHASH_NPREFIXES (sizeof(pwhash_prefixes) / sizeof(pwhash_prefixes[0]))

/* Schemes whose setting pwhash_setting can cut out of a hash: 0 = up to the last '$'. */
static const struct {
	const char *prefix;
	size_t setting_len;
} pwhash_settings[] = {
    {"$y$", 0}, {"$6$", 0}, {"$5$", 0}, {"$1$", 0}, {"$2a$", 29}, {"$2b$", 29}, {"$2y$", 29},
};

#define PWHASH_NSETTINGS (sizeof(pwhash_settings) / sizeof(pwhash_settings[0]))

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

/*
 * crypt_rn(password, setting) into a fresh, zeroed struct crypt_data: the
 * one place the password is copied. *cd_r is the caller's to wipe and free
 * (also when NULL is returned: then it may be NULL too). The password must
 * be usable (no NUL, len <= PWHASH_PASSWORD_MAX) and setting at most
 * PWHASH_HASH_MAX bytes.
 */
static const char *pwhash_crypt(const char *password, size_t len, const char *setting,
                                size_t setting_len, struct crypt_data **cd_r)
{
	struct crypt_data *cd;

	/* Zeroed, as libxcrypt asks of a fresh struct crypt_data ("initialized", "reserved"). */
	*cd_r = cd = calloc(1, sizeof(*cd));
	if (cd == NULL)
		return NULL;
	if (len > 0)
		memcpy(cd->input, password, len);
	cd->input[len] = '\0';
	memcpy(cd->setting, setting, setting_len);
	cd->setting[setting_len] = '\0';
	/* NULL on failure (unknown or malformed setting, ...), never a "*0" token. */
	return crypt_rn(cd->input, cd->setting, cd, (int)sizeof(*cd));
}

static void pwhash_crypt_free(struct crypt_data *cd)
{
	if (cd == NULL)
		return;
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
}

/* True if crypt can take password[0..len) as it is. */
static bool pwhash_password_usable(const char *password, size_t len)
{
	if (password == NULL)
		return len == 0;
	/* crypt takes a C string: a NUL inside would silently shorten the password. */
	return len <= PWHASH_PASSWORD_MAX && memchr(password, '\0', len) == NULL;
}

int pwhash_verify(const char *password, size_t len, const char *hash)
{
	struct crypt_data *cd = NULL;
	const char *computed;
	size_t hash_len;
	int ret = -1;

	if (!pwhash_supported(hash) || !pwhash_password_usable(password, len))
		goto out;
	hash_len = strnlen(hash, PWHASH_HASH_MAX + 1);
	if (hash_len > PWHASH_HASH_MAX)
		goto out;

	computed = pwhash_crypt(password, len, hash, hash_len, &cd);
	if (computed == NULL)
		goto out;
	if (strnlen(computed, CRYPT_OUTPUT_SIZE) != hash_len)
		goto out;
	ret = pwhash_equal(computed, hash, hash_len);
out:
	pwhash_crypt_free(cd);
	return ret;
}

int pwhash_setting(const char *hash, char *setting_r, size_t size)
{
	size_t n = 0;

	if (hash == NULL)
		return -1;
	for (size_t i = 0; i < PWHASH_NSETTINGS; i++) {
		size_t plen = strlen(pwhash_settings[i].prefix);

		if (strncmp(hash, pwhash_settings[i].prefix, plen) != 0)
			continue;
		if (pwhash_settings[i].setting_len > 0) {
			n = pwhash_settings[i].setting_len;
			if (strnlen(hash, n) < n)
				return -1;
		} else {
			const char *last = strrchr(hash + plen, '$');

			if (last == NULL)
				return -1;
			n = (size_t)(last - hash) + 1;
		}
		break;
	}
	if (n == 0 || n >= size)
		return -1;
	memcpy(setting_r, hash, n);
	setting_r[n] = '\0';
	return 0;
}

int pwhash_default_setting(char *setting_r, size_t size)
{
	if (size < PWHASH_SETTING_SIZE) {
		errno = ERANGE;
		return -1;
	}
	/* NULL prefix: libxcrypt's default scheme; count 0: its default cost; salt from the OS. */
	if (crypt_gensalt_rn(NULL, 0, NULL, 0, setting_r, (int)size) == NULL)
		return -1;
	return 0;
}

int pwhash_dummy(const char *password, size_t len, const char *setting)
{
	struct crypt_data *cd = NULL;
	size_t setting_len;
	int ret = -1;

	if (setting == NULL)
		goto out;
	setting_len = strnlen(setting, PWHASH_HASH_MAX + 1);
	if (setting_len > PWHASH_HASH_MAX)
		goto out;
	/* What pwhash_verify refuses at once still costs a crypt here: see cryptpool.c. */
	if (!pwhash_password_usable(password, len)) {
		password = "";
		len = 0;
	}
	if (pwhash_crypt(password, len, setting, setting_len, &cd) != NULL)
		ret = 0;
out:
	pwhash_crypt_free(cd);
	return ret;
}
