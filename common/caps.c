/*
 * caps — see caps.h. Capability lists as the backend sends them, e.g.
 *
 *   "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ... STARTTLS AUTH=PLAIN"
 *        |         x          |        |          x         x
 *   "IMAP4rev1 LOGIN-REFERRALS ID ..."                (caps_filter)
 *
 * Invariants:
 *   - An atom is a maximal run of bytes that are neither SP nor a control
 *     character. Control characters (CR, LF, TAB, NUL, ...) separate atoms
 *     like SP does, so whatever the backend sent, the filtered list holds no
 *     line break or NUL and is safe to paste into a response line.
 *   - Matching is ASCII case-insensitive and on whole atoms only:
 *     "LOGIN-REFERRALS" is not "LOGINDISABLED", "SORT" is not "SORT=DISPLAY".
 *   - Nothing is read beyond the given length, nothing written beyond outcap.
 */
#include "caps.h"

#include <string.h>

/* The atoms hidden whole; AUTH= and COMPRESS= are hidden as prefixes. */
static const char *const caps_hidden_words[] = {
    "STARTTLS",
    "LOGINDISABLED",
    "SASL-IR",
    "UNAUTHENTICATE",
};

static const char *const caps_hidden_prefixes[] = {
    "AUTH=",
    "COMPRESS=",
};

/* ASCII only: capability names are ASCII and the locale must not matter. */
static unsigned char caps_upper(unsigned char c)
{
	return (c >= 'a' && c <= 'z') ? (unsigned char)(c - 'a' + 'A') : c;
}

static bool caps_is_sep(unsigned char c)
{
	return c <= ' ' || c == 0x7f;
}

/* True if s[0..len) starts with the ASCII word w, case-insensitively. */
static bool caps_prefix_eq(const char *s, size_t len, const char *w, size_t wlen)
{
	if (len < wlen)
		return false;
	for (size_t i = 0; i < wlen; i++) {
		if (caps_upper((unsigned char)s[i]) != caps_upper((unsigned char)w[i]))
			return false;
	}
	return true;
}

static bool caps_atom_eq(const char *s, size_t len, const char *w)
{
	size_t wlen = strlen(w);

	return len == wlen && caps_prefix_eq(s, len, w, wlen);
}

bool caps_is_hidden(const char *cap, size_t len)
{
	size_t i;

	for (i = 0; i < sizeof(caps_hidden_words) / sizeof(caps_hidden_words[0]); i++) {
		if (caps_atom_eq(cap, len, caps_hidden_words[i]))
			return true;
	}
	for (i = 0; i < sizeof(caps_hidden_prefixes) / sizeof(caps_hidden_prefixes[0]); i++) {
		const char *p = caps_hidden_prefixes[i];

		if (caps_prefix_eq(cap, len, p, strlen(p)))
			return true;
	}
	return false;
}

/*
 * Find the next atom in s[*pos..len): returns true with *start_r and *len_r set
 * and *pos moved past it, or false at the end of the list.
 */
static bool caps_next_atom(const char *s, size_t len, size_t *pos, size_t *start_r, size_t *len_r)
{
	size_t i = *pos, start;

	while (i < len && caps_is_sep((unsigned char)s[i]))
		i++;
	if (i == len) {
		*pos = i;
		return false;
	}
	start = i;
	while (i < len && !caps_is_sep((unsigned char)s[i]))
		i++;
	*start_r = start;
	*len_r = i - start;
	*pos = i;
	return true;
}

long caps_filter(const char *in, size_t inlen, char *out, size_t outcap)
{
	size_t pos = 0, start, alen, o = 0;

	if (outcap == 0)
		return -1;
	while (caps_next_atom(in, inlen, &pos, &start, &alen)) {
		size_t sep = (o > 0) ? 1 : 0;

		if (caps_is_hidden(in + start, alen))
			continue;
		/* Room for the separator, the atom and the final NUL. */
		if (outcap - o < sep + alen + 1) {
			out[0] = '\0';
			return -1;
		}
		if (sep)
			out[o++] = ' ';
		memcpy(out + o, in + start, alen);
		o += alen;
	}
	out[o] = '\0';
	return (long)o;
}

bool caps_has(const char *list, size_t len, const char *cap)
{
	size_t pos = 0, start, alen;

	while (caps_next_atom(list, len, &pos, &start, &alen)) {
		if (caps_atom_eq(list + start, alen, cap))
			return true;
	}
	return false;
}

bool caps_nonsync_ok(const char *list, size_t len, uint64_t size)
{
	if (caps_has(list, len, "LITERAL+"))
		return true;
	if (size > CAPS_LITERAL_MINUS_MAX)
		return false;
	return caps_has(list, len, "LITERAL-") || caps_has(list, len, "IMAP4rev2");
}

const char *caps_nonsync_refusal(const char *list, size_t len, uint64_t size)
{
	if (caps_nonsync_ok(list, len, size))
		return NULL;
	if (caps_has(list, len, "LITERAL-") || caps_has(list, len, "IMAP4rev2"))
		return "BAD [TOOBIG] Non-synchronizing literal too large.";
	return "BAD Non-synchronizing literals are not supported by this server.";
}
