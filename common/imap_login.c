/*
 * imap_login — login command texts (see imap_login.h).
 *
 * Sizes are computed before writing: a string takes at most 2n + 2 bytes
 * quoted (every byte escaped, two quotes) or n + 25 as a literal ("{" 20
 * digits "+}\r\n"), so one allocation holds the whole command. Every
 * intermediate copy of a credential is wiped before it is freed.
 */
#include "imap_login.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "imap_args.h"

static void wipe_free(void *p, size_t len)
{
	if (p != NULL) {
		explicit_bzero(p, len);
		free(p);
	}
}

char *imap_login_plain(const struct imap_creds *c)
{
	size_t alen = c->authz != NULL ? c->authz_len : 0;
	size_t rawlen = alen + 1 + c->user_len + 1 + c->pass_len;
	size_t enclen = B64_ENCODED_LEN(rawlen) + 1;
	uint8_t *raw = malloc(rawlen);
	char *enc = malloc(enclen);

	if (raw == NULL || enc == NULL) {
		free(raw);
		free(enc);
		return NULL;
	}
	if (alen > 0)
		memcpy(raw, c->authz, alen);
	raw[alen] = '\0';
	memcpy(raw + alen + 1, c->user, c->user_len);
	raw[alen + 1 + c->user_len] = '\0';
	memcpy(raw + alen + 2 + c->user_len, c->pass, c->pass_len);
	if (b64_encode(raw, rawlen, enc, enclen) < 0) {
		wipe_free(enc, enclen);
		enc = NULL;
	}
	wipe_free(raw, rawlen);
	return enc;
}

static bool printable(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c >= 0x7f)
			return false;
	}
	return true;
}

/* The most bytes put_string may write for a string of len bytes. */
static size_t string_room(size_t len)
{
	return 2 * len + 2 > len + 32 ? 2 * len + 2 : len + 32;
}

/* Write s at out as a quoted string, or a LITERAL+ literal when it has to
 * be and may be. Returns the bytes written, 0 when it cannot be sent. */
static size_t put_string(char *out, const char *s, size_t len, bool literal_plus)
{
	size_t n = 0;

	if (printable(s, len)) {
		out[n++] = '"';
		for (size_t i = 0; i < len; i++) {
			if (s[i] == '"' || s[i] == '\\')
				out[n++] = '\\';
			out[n++] = s[i];
		}
		out[n++] = '"';
		return n;
	}
	if (!literal_plus)
		return 0;
	n = (size_t)snprintf(out, 32, "{%zu+}\r\n", len);
	memcpy(out + n, s, len);
	return n + len;
}

char *imap_login_cmd(const struct imap_creds *c, const char *sep, bool literal_plus, size_t *len_r,
                     const char **err_r)
{
	size_t slen = strlen(sep);
	size_t name_len = c->user_len + (c->authz != NULL ? c->authz_len + slen : 0);
	const char *name = c->user;
	char *joined = NULL, *text;
	size_t n = 6, k;

	*err_r = "out of memory";
	if (c->authz != NULL) {
		/* Dovecot's master login: "user<separator>master". */
		joined = malloc(name_len > 0 ? name_len : 1);
		if (joined == NULL)
			return NULL;
		memcpy(joined, c->authz, c->authz_len);
		memcpy(joined + c->authz_len, sep, slen);
		memcpy(joined + c->authz_len + slen, c->user, c->user_len);
		name = joined;
	}
	text = malloc(6 + string_room(name_len) + 1 + string_room(c->pass_len));
	if (text != NULL) {
		memcpy(text, "LOGIN ", 6);
		k = put_string(text + n, name, name_len, literal_plus);
		n += k;
		if (k > 0) {
			text[n++] = ' ';
			k = put_string(text + n, c->pass, c->pass_len, literal_plus);
			n += k;
		}
		if (k == 0) {
			wipe_free(text, n);
			text = NULL;
			*err_r = "credentials cannot be sent with LOGIN to this backend";
		}
		*len_r = n;
	}
	wipe_free(joined, name_len);
	return text;
}

bool imap_login_no_unavailable(const uint8_t *rest, size_t len)
{
	static const char unavail[] = "[UNAVAILABLE]";
	static const char limit[] = "[LIMIT]";

	return (len >= sizeof(unavail) - 1 && imap_word_eq(rest, sizeof(unavail) - 1, unavail)) ||
	       (len >= sizeof(limit) - 1 && imap_word_eq(rest, sizeof(limit) - 1, limit));
}
