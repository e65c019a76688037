/*
 * test_pwhash — pwhash_verify against hashes made here with libxcrypt, and
 * against fixed vectors made elsewhere: the sha512-crypt specification,
 * OpenSSL's own implementation (`openssl passwd -6`), libxcrypt's bcrypt
 * known-answer table, and strings produced once with Perl's and Python's
 * crypt (both libxcrypt) and pasted in. Then everything that must not
 * verify: wrong, empty, NUL-carrying and overlong passwords; empty, locked,
 * unknown, truncated and padded hashes. Last, the pieces of a dummy
 * verification: pwhash_setting, pwhash_default_setting, pwhash_dummy.
 */
#include <crypt.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pwhash.h"

static int verify(const char *password, const char *hash)
{
	return pwhash_verify(password, strlen(password), hash);
}

/* Hash password with a fresh random salt of the given scheme and cost. */
static void make_hash(const char *prefix, unsigned long count, const char *password, char *out,
                      size_t outcap)
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd = calloc(1, sizeof(*cd));
	const char *h;

	assert_non_null(cd);
	assert_non_null(crypt_gensalt_rn(prefix, count, NULL, 0, setting, sizeof(setting)));
	assert_memory_equal(setting, prefix, strlen(prefix));
	h = crypt_rn(password, setting, cd, (int)sizeof(*cd));
	assert_non_null(h);
	assert_true(strlen(h) < outcap);
	strcpy(out, h);
	free(cd);
}

struct scheme {
	const char *prefix;
	unsigned long count; /* cost for crypt_gensalt; 0 = libxcrypt's default */
};

/* Under memcheck (make valgrind sets UNIT_UNDER_VALGRIND) libxcrypt's own
 * work runs ~50x slower and is not this code: the costly schemes (default
 * yescrypt, 20,000 rounds) and most cross-checks are left to the plain and
 * SANITIZE=1 runs, which do them all. */
static bool light(void)
{
	return getenv("UNIT_UNDER_VALGRIND") != NULL;
}

static const struct scheme schemes[] = {
    {"$y$", 0},     /* yescrypt at the default cost, as Debian's passwd writes it */
    {"$y$", 3},     /* a cheaper yescrypt: other parameters in the setting */
    {"$6$", 0},     /* sha512-crypt, 5000 rounds */
    {"$6$", 20000}, /* "rounds=20000$" in the setting */
    {"$2b$", 5},    /* bcrypt, cheap cost: the algorithm is the same */
    {"$2y$", 5},
};

#define NSCHEMES (sizeof(schemes) / sizeof(schemes[0]))

static const char *const passwords[] = {
    "correct horse battery staple", "x", "j\xc3\xb6rg p\xc3\xa4ss", /* UTF-8 */
    "\x01\x7f\x80\xff tab\there",   "",
};

#define NPASSWORDS (sizeof(passwords) / sizeof(passwords[0]))

static void test_generated_roundtrip(void **state)
{
	(void)state;
	for (size_t s = 0; s < NSCHEMES; s++) {
		if (light() && (schemes[s].count == 0 ? strcmp(schemes[s].prefix, "$y$") == 0
		                                      : schemes[s].count > 10000))
			continue;
		for (size_t p = 0; p < NPASSWORDS; p++) {
			const char *pw = passwords[p];
			char hash[CRYPT_OUTPUT_SIZE];
			char other[64];

			make_hash(schemes[s].prefix, schemes[s].count, pw, hash, sizeof(hash));
			assert_true(pwhash_supported(hash));
			assert_int_equal(verify(pw, hash), 1);

			/* Every other password of the table is wrong for this hash. */
			for (size_t q = 0; q < NPASSWORDS; q++) {
				if (q != p && (!light() || q == (p + 1) % NPASSWORDS))
					assert_int_equal(verify(passwords[q], hash), 0);
			}
			/* One byte more, one byte less, one byte changed. */
			snprintf(other, sizeof(other), "%sx", pw);
			assert_int_equal(verify(other, hash), 0);
			if (pw[0] != '\0') {
				assert_int_equal(pwhash_verify(pw, strlen(pw) - 1, hash), 0);
				snprintf(other, sizeof(other), "%s", pw);
				other[0] ^= 0x20;
				assert_int_equal(verify(other, hash), 0);
			}
		}
	}
}

/* The same password hashed twice gets two salts, and each hash verifies it. */
static void test_generated_salts_differ(void **state)
{
	char a[CRYPT_OUTPUT_SIZE], b[CRYPT_OUTPUT_SIZE];

	(void)state;
	make_hash("$6$", 0, "secret", a, sizeof(a));
	make_hash("$6$", 0, "secret", b, sizeof(b));
	assert_string_not_equal(a, b);
	assert_int_equal(verify("secret", a), 1);
	assert_int_equal(verify("secret", b), 1);
}

struct vector {
	const char *password;
	const char *hash;
};

/* Made outside this test; see the comment on each. */
static const struct vector vectors[] = {
    /* sha512-crypt specification (Drepper), test vectors 1 and 2 */
    {"Hello world!",
     "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"},
    {"Hello world!",
     "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."},
    /* OpenSSL 3: openssl passwd -6 -salt imapmuxsalt 'correct horse' */
    {"correct horse",
     "$6$imapmuxsalt$iBPpeyRtcQ8nZ5XnDBSWAr0rP90Ix8QdQojNgJj9Z56qXQzaOEVXiCryVyRulREizekDGnUYnnSwEwfbVOqbm."},
    /* OpenSSL 3: openssl passwd -6 -salt 'R9.4/kpZ' (UTF-8 password) */
    {"j\xc3\xb6rg p\xc3\xa4ss",
     "$6$R9.4/kpZ$tcGN.KAdcJJ1l903xb9Su3NSHbdz.7tFeKvU4Nqj3GMLrgEjqNTYyoAriXJxsbAm5OFmGCuqK625Kkg6NSBFc1"},
    /* Perl crypt("", '$6$emptysalt$') */
    {"",
     "$6$emptysalt$TrI.h19YNad.S.Xw2WEgON9ojBrkXYcCfZrEcOEa9k/Bp5Sw4dxhsyY0KdBJ5Vt2UbEFOMolXqrfnZHc1QRM.."},
    /* libxcrypt test/crypt-kat.inc (from the OpenBSD/Openwall bcrypt vectors) */
    {"U*U", "$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"},
    {"", "$2b$05$CCCCCCCCCCCCCCCCCCCCC.7uG0VCzI2bS7j6ymqJi9CdcdxiRTWNy"},
    {"Hello world!", "$2b$04$CCCCCCCCCCCCCCCCCCCCC.M.JZM2tZUe85sR83hfk5p2NZ0IVXwXe"},
    /* Perl crypt with a $2y$ setting: same algorithm as $2b$ */
    {"U*U", "$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"},
    {"correct horse", "$2y$05$CCCCCCCCCCCCCCCCCCCCC.WrAwgFxicHZ3kL7zMvXYXHKosDn8ot2"},
    /* Python 3.11 crypt.crypt (libxcrypt 4.4.33), yescrypt at Debian's default cost */
    {"correct horse", "$y$j9T$imapmuxfixedsalt01$dBVpg8JuE5rC3gjAV4iV5avQxB5Jv9IQCNOfoTYVyn2"},
    {"j\xc3\xb6rg p\xc3\xa4ss",
     "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$gG.vgl2tYo3S3LN4Hx.PbM0Y4vwp8wvE7VwZBy9NaA3"},
};

#define NVECTORS (sizeof(vectors) / sizeof(vectors[0]))

static void test_vectors(void **state)
{
	(void)state;
	for (size_t i = 0; i < NVECTORS; i++) {
		assert_true(pwhash_supported(vectors[i].hash));
		assert_int_equal(verify(vectors[i].password, vectors[i].hash), 1);
		/* ...and every other vector's password is wrong, unless it is the same. */
		for (size_t j = 0; j < NVECTORS; j++) {
			if (light() && j != (i + 1) % NVECTORS)
				continue;
			if (strcmp(vectors[j].password, vectors[i].password) != 0)
				assert_int_equal(verify(vectors[j].password, vectors[i].hash), 0);
		}
	}
}

/* A hash damaged in its last character still parses: a mismatch, not an error. */
static void test_vectors_flipped_char(void **state)
{
	(void)state;
	for (size_t i = 0; i < NVECTORS; i++) {
		char h[CRYPT_OUTPUT_SIZE];
		size_t n = strlen(vectors[i].hash);

		strcpy(h, vectors[i].hash);
		h[n - 1] = h[n - 1] == 'A' ? 'B' : 'A';
		assert_int_equal(verify(vectors[i].password, h), 0);
	}
}

/* Cut anywhere in the hash part, or with bytes after it: unusable, -1. */
static void test_vectors_truncated_padded(void **state)
{
	(void)state;
	for (size_t i = 0; i < NVECTORS; i++) {
		const char *full = vectors[i].hash;
		const char *pw = vectors[i].password;
		size_t n = strlen(full);
		size_t hash_start = (size_t)(strrchr(full, '$') - full) + 1;
		char h[CRYPT_OUTPUT_SIZE + 8];

		size_t cuts[] = {hash_start, hash_start + 1, (hash_start + n) / 2, n - 2, n - 1};

		/* Cuts after the last '$' (for bcrypt, salt and hash run together there). */
		for (size_t k = 0; k < sizeof(cuts) / sizeof(cuts[0]); k++) {
			memcpy(h, full, cuts[k]);
			h[cuts[k]] = '\0';
			assert_int_equal(verify(pw, h), -1);
		}
		snprintf(h, sizeof(h), "%s\n", full); /* a newline left over from the store */
		assert_int_equal(verify(pw, h), -1);
		snprintf(h, sizeof(h), "%s ", full);
		assert_int_equal(verify(pw, h), -1);
		snprintf(h, sizeof(h), "%sA", full);
		assert_int_equal(verify(pw, h), -1);
	}
}

static void test_password_with_nul(void **state)
{
	static const char hash[] =
	    "$6$imapmuxsalt$iBPpeyRtcQ8nZ5XnDBSWAr0rP90Ix8QdQojNgJj9Z56qXQzaOEVXiCryVyRulREizekDGnUYnnSwEwfbVOqbm.";
	static const char bcrypt[] = "$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";

	(void)state;
	/* The right password, then a NUL: crypt would see only the first part and say yes. */
	assert_int_equal(pwhash_verify("correct horse\0evil", 18, hash), -1);
	assert_int_equal(pwhash_verify("correct horse\0", 14, hash), -1);
	assert_int_equal(pwhash_verify("\0correct horse", 14, hash), -1);
	assert_int_equal(pwhash_verify("\0", 1, hash), -1);
	assert_int_equal(pwhash_verify("U*U\0", 4, bcrypt), -1);
	/* The length decides, not the terminator. */
	assert_int_equal(pwhash_verify("correct horse", 13, hash), 1);
	assert_int_equal(pwhash_verify("correct horsewhatever", 13, hash), 1);
	assert_int_equal(pwhash_verify("correct horsewhatever", 14, hash), 0);
}

static void test_empty_password(void **state)
{
	static const char empty6[] =
	    "$6$emptysalt$TrI.h19YNad.S.Xw2WEgON9ojBrkXYcCfZrEcOEa9k/Bp5Sw4dxhsyY0KdBJ5Vt2UbEFOMolXqrfnZHc1QRM..";
	static const char other6[] =
	    "$6$imapmuxsalt$iBPpeyRtcQ8nZ5XnDBSWAr0rP90Ix8QdQojNgJj9Z56qXQzaOEVXiCryVyRulREizekDGnUYnnSwEwfbVOqbm.";

	(void)state;
	assert_int_equal(pwhash_verify("", 0, empty6), 1);
	assert_int_equal(pwhash_verify(NULL, 0, empty6), 1);
	assert_int_equal(pwhash_verify("", 0, other6), 0);
	assert_int_equal(pwhash_verify(NULL, 0, other6), 0);
	assert_int_equal(pwhash_verify("x", 1, empty6), 0);
	/* NULL with a length is a caller bug, never a match. */
	assert_int_equal(pwhash_verify(NULL, 5, empty6), -1);
}

static void test_long_password(void **state)
{
	char pw[CRYPT_MAX_PASSPHRASE_SIZE + 2];
	char hash[CRYPT_OUTPUT_SIZE];

	(void)state;
	memset(pw, 'p', sizeof(pw));
	pw[CRYPT_MAX_PASSPHRASE_SIZE - 1] = '\0';
	/* 511 bytes: the longest crypt takes. */
	make_hash("$6$", 1000, pw, hash, sizeof(hash));
	assert_int_equal(pwhash_verify(pw, CRYPT_MAX_PASSPHRASE_SIZE - 1, hash), 1);
	assert_int_equal(pwhash_verify(pw, CRYPT_MAX_PASSPHRASE_SIZE - 2, hash), 0);
	/* 512 and more: refused before crypt, whatever follows. */
	memset(pw, 'p', sizeof(pw));
	assert_int_equal(pwhash_verify(pw, CRYPT_MAX_PASSPHRASE_SIZE, hash), -1);
	assert_int_equal(pwhash_verify(pw, CRYPT_MAX_PASSPHRASE_SIZE + 1, hash), -1);
	assert_int_equal(pwhash_verify(pw, SIZE_MAX, hash), -1);
}

/* bcrypt reads 72 bytes at most: documented in pwhash.h, pinned here. */
static void test_bcrypt_72_bytes(void **state)
{
	char pw[100];
	char hash[CRYPT_OUTPUT_SIZE];

	(void)state;
	memset(pw, 'b', sizeof(pw));
	pw[72] = '\0';
	make_hash("$2b$", 4, pw, hash, sizeof(hash));
	assert_int_equal(pwhash_verify(pw, 72, hash), 1);
	assert_int_equal(pwhash_verify(pw, 71, hash), 0);
	pw[72] = 'X';
	assert_int_equal(pwhash_verify(pw, 80, hash), 1);
}

static void test_unusable_hashes(void **state)
{
	static const char *const bad[] = {
	    "",
	    "*",
	    "!",
	    "!!",
	    "*LK*",
	    "*NP*",
	    "x",
	    "!$6$imapmuxsalt$iBPpeyRtcQ8nZ5XnDBSWAr0rP90Ix8QdQojNgJj9Z56qXQzaOEVXiCryVyRulREizekDGnUYnnSwEwfbVOqbm.",
	    "*$6$imapmuxsalt$iBPpeyRtcQ8nZ5XnDBSWAr0rP90Ix8QdQojNgJj9Z56qXQzaOEVXiCryVyRulREizekDGnUYnnSwEwfbVOqbm.",
	    " $6$imapmuxsalt$iBPpeyRtcQ8nZ5XnDBSWAr0rP90Ix8QdQojNgJj9Z56qXQzaOEVXiCryVyRulREizekDGnUYnnSwEwfbVOqbm.",
	    "$6",
	    "$6$",
	    "$y$",
	    "$y$j9T$",
	    "$2b$",
	    "$2b$05$",
	    "$2b$05$CCCC",
	    "$2b$99$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", /* cost out of range */
	    "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", /* old bcrypt: not ours */
	    "$2x$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
	    "$1$saltsalt$7tGTG8.ES1tUeJ6w8W7ti1",                        /* md5-crypt */
	    "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZF4aW8Jb5", /* sha256-crypt */
	    "$7$CU..../....MJHnaAkegEVYHsFKkmfzJ1",                      /* scrypt */
	    "$gy$j9T$MJHnaAkegEVYHsFKkmfzJ1",                            /* gost-yescrypt */
	    "saX3jNYFnb2Mk",                                             /* DES */
	    "$Y$j9T$imapmuxfixedsalt01$dBVpg8JuE5rC3gjAV4iV5avQxB5Jv9IQCNOfoTYVyn2",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(verify("correct horse", bad[i]), -1);
		assert_int_equal(verify("U*U", bad[i]), -1);
		assert_int_equal(verify("", bad[i]), -1);
	}
	assert_int_equal(verify("x", NULL), -1);
}

static void test_hash_too_long(void **state)
{
	char h[CRYPT_OUTPUT_SIZE + 10];

	(void)state;
	memset(h, 'a', sizeof(h));
	memcpy(h, "$6$salt$", 8);
	h[sizeof(h) - 1] = '\0';
	assert_int_equal(verify("x", h), -1);
}

static void test_supported(void **state)
{
	(void)state;
	assert_true(pwhash_supported("$y$"));
	assert_true(pwhash_supported("$6$"));
	assert_true(pwhash_supported("$2b$"));
	assert_true(pwhash_supported("$2y$"));
	assert_true(pwhash_supported(
	    "$y$j9T$imapmuxfixedsalt01$dBVpg8JuE5rC3gjAV4iV5avQxB5Jv9IQCNOfoTYVyn2"));
	assert_false(pwhash_supported(NULL));
	assert_false(pwhash_supported(""));
	assert_false(pwhash_supported("$"));
	assert_false(pwhash_supported("$y"));
	assert_false(pwhash_supported("$6"));
	assert_false(pwhash_supported("$2b"));
	assert_false(
	    pwhash_supported("$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"));
	assert_false(pwhash_supported("$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZF4aW8Jb5"));
	assert_false(pwhash_supported("$1$saltsalt$7tGTG8.ES1tUeJ6w8W7ti1"));
	assert_false(pwhash_supported("!$6$x$y"));
	assert_false(pwhash_supported("*"));
	assert_false(pwhash_supported("!"));
	assert_false(pwhash_supported("Y$6$"));
}

/* The setting cut out of a hash: table of hashes and what crypt must be given. */
static void test_setting_table(void **state)
{
	static const struct {
		const char *hash;
		const char *setting; /* NULL: -1 */
	} t[] = {
	    {"$y$j9T$imapmuxfixedsalt01$dBVpg8JuE5rC3gjAV4iV5avQxB5Jv9IQCNOfoTYVyn2",
	     "$y$j9T$imapmuxfixedsalt01$"},
	    {"$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
	     "$6$saltstring$"},
	    {"$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
	     "$6$rounds=10000$saltstringsaltst$"},
	    {"$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZF4aW8Jb5", "$5$saltstring$"},
	    {"$1$saltsalt$7tGTG8.ES1tUeJ6w8W7ti1", "$1$saltsalt$"},
	    {"$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
	     "$2a$05$CCCCCCCCCCCCCCCCCCCCC."},
	    {"$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
	     "$2b$05$CCCCCCCCCCCCCCCCCCCCC."},
	    {"$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
	     "$2y$05$CCCCCCCCCCCCCCCCCCCCC."},
	    {"$y$j9T$", "$y$j9T$"},
	    {"$6$salt", NULL}, /* no '$' after the prefix */
	    {"$y$", NULL},
	    {"$2b$05$short", NULL},
	    {"", NULL},
	    {"*", NULL},
	    {"!$6$salt$hash", NULL},
	    {"$3$salt$hash", NULL},
	    {"{PLAIN}secret", NULL},
	};
	char out[PWHASH_HASH_MAX + 1];

	(void)state;
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		memset(out, 'Z', sizeof(out));
		if (t[i].setting == NULL) {
			assert_int_equal(pwhash_setting(t[i].hash, out, sizeof(out)), -1);
			assert_int_equal(out[0], 'Z'); /* untouched */
		} else {
			assert_int_equal(pwhash_setting(t[i].hash, out, sizeof(out)), 0);
			assert_string_equal(out, t[i].setting);
		}
	}
	assert_int_equal(pwhash_setting(NULL, out, sizeof(out)), -1);
	/* The setting and its NUL must fit. */
	assert_int_equal(pwhash_setting("$6$saltstring$abc", out, 15), 0);
	assert_string_equal(out, "$6$saltstring$");
	assert_int_equal(pwhash_setting("$6$saltstring$abc", out, 14), -1);
	assert_int_equal(pwhash_setting("$2b$05$CCCCCCCCCCCCCCCCCCCCC.E5Y", out, 29), -1);
}

/* For every scheme verified, crypt with the setting alone reproduces the hash. */
static void test_setting_reproduces_hash(void **state)
{
	struct crypt_data *cd = calloc(1, sizeof(*cd));

	(void)state;
	assert_non_null(cd);
	for (size_t s = 0; s < NSCHEMES; s++) {
		char hash[CRYPT_OUTPUT_SIZE], setting[PWHASH_HASH_MAX + 1];
		const char *h;

		make_hash(schemes[s].prefix, schemes[s].count, "pw", hash, sizeof(hash));
		assert_int_equal(pwhash_setting(hash, setting, sizeof(setting)), 0);
		assert_true(strlen(setting) < strlen(hash));
		assert_memory_equal(setting, hash, strlen(setting));
		h = crypt_rn("pw", setting, cd, (int)sizeof(*cd));
		assert_non_null(h);
		assert_string_equal(h, hash);
		assert_int_equal(pwhash_dummy("pw", 2, setting), 0);
	}
	free(cd);
}

/* libxcrypt's default: a fresh salt each time, a setting crypt takes. */
static void test_default_setting(void **state)
{
	char a[PWHASH_SETTING_SIZE], b[PWHASH_SETTING_SIZE], hash[CRYPT_OUTPUT_SIZE];

	(void)state;
	assert_int_equal(pwhash_default_setting(a, sizeof(a)), 0);
	assert_int_equal(pwhash_default_setting(b, sizeof(b)), 0);
	assert_string_not_equal(a, b);
	assert_true(a[0] == '$');
	/* Debian 12's libxcrypt defaults to yescrypt, which pwhash verifies. */
	assert_true(pwhash_supported(a));
	make_hash("$y$", 0, "pw", hash, sizeof(hash));
	assert_memory_equal(a, hash, 7); /* "$y$j9T$": the same cost as passwd's */
	assert_int_equal(pwhash_dummy("pw", 2, a), 0);
	assert_int_equal(pwhash_default_setting(a, PWHASH_SETTING_SIZE - 1), -1);
	assert_int_equal(errno, ERANGE);
}

/* The dummy answers 0 whatever the password, even the one the setting's hash is of. */
static void test_dummy(void **state)
{
	char hash[CRYPT_OUTPUT_SIZE], setting[PWHASH_HASH_MAX + 1];
	char longpw[PWHASH_PASSWORD_MAX + 2];
	char longset[PWHASH_HASH_MAX + 2];

	(void)state;
	make_hash("$6$", 1000, "right", hash, sizeof(hash));
	assert_int_equal(pwhash_setting(hash, setting, sizeof(setting)), 0);
	assert_int_equal(verify("right", hash), 1);
	assert_int_equal(pwhash_dummy("right", 5, setting), 0);
	assert_int_equal(pwhash_dummy("wrong", 5, setting), 0);
	assert_int_equal(pwhash_dummy("", 0, setting), 0);
	assert_int_equal(pwhash_dummy(NULL, 0, setting), 0);
	/* Passwords crypt cannot take still cost a crypt (of the empty string). */
	assert_int_equal(pwhash_dummy("ri\0ght", 6, setting), 0);
	assert_int_equal(pwhash_dummy(NULL, 5, setting), 0);
	memset(longpw, 'p', sizeof(longpw));
	assert_int_equal(pwhash_dummy(longpw, sizeof(longpw), setting), 0);
	/* Even the whole hash as setting: crypt reads its setting part only. */
	assert_int_equal(pwhash_dummy("right", 5, hash), 0);
	/* A setting crypt cannot run: -1. */
	assert_int_equal(pwhash_dummy("x", 1, NULL), -1);
	assert_int_equal(pwhash_dummy("x", 1, ""), -1);
	assert_int_equal(pwhash_dummy("x", 1, "$y$"), -1);
	assert_int_equal(pwhash_dummy("x", 1, "*"), -1);
	memset(longset, 'a', sizeof(longset));
	memcpy(longset, "$6$salt$", 8);
	longset[sizeof(longset) - 1] = '\0';
	assert_int_equal(pwhash_dummy("x", 1, longset), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_supported),
	    cmocka_unit_test(test_generated_roundtrip),
	    cmocka_unit_test(test_generated_salts_differ),
	    cmocka_unit_test(test_vectors),
	    cmocka_unit_test(test_vectors_flipped_char),
	    cmocka_unit_test(test_vectors_truncated_padded),
	    cmocka_unit_test(test_password_with_nul),
	    cmocka_unit_test(test_empty_password),
	    cmocka_unit_test(test_long_password),
	    cmocka_unit_test(test_bcrypt_72_bytes),
	    cmocka_unit_test(test_unusable_hashes),
	    cmocka_unit_test(test_hash_too_long),
	    cmocka_unit_test(test_setting_table),
	    cmocka_unit_test(test_setting_reproduces_hash),
	    cmocka_unit_test(test_default_setting),
	    cmocka_unit_test(test_dummy),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
