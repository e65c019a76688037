/*
 * imap_login — the text of the commands that log imapmux in to a backend
 * with a user's (or a master user's) credentials, without tag or final
 * CRLF, for the backend's command channel to send:
 *
 *   AUTHENTICATE PLAIN response   base64(authz NUL user NUL pass), RFC 4616
 *   LOGIN name pass               IMAP quoted strings, or LITERAL+ literals
 *                                 for bytes a quoted string cannot hold
 *
 * and what a refused login's response code means. Pure: no I/O. Every
 * string made here holds credentials: the caller wipes it
 * (explicit_bzero) before freeing it.
 */
#ifndef IMAPMUX_IMAP_LOGIN_H
#define IMAPMUX_IMAP_LOGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct imap_creds {
	const char *authz; /* authorization identity (a master login), NULL if none */
	size_t authz_len;
	const char *user; /* the authentication identity: the master user when authz is set */
	size_t user_len;
	const char *pass;
	size_t pass_len;
};

/* The AUTHENTICATE PLAIN response for c, a new NUL-terminated string;
 * NULL when out of memory. */
char *imap_login_plain(const struct imap_creds *c);

/*
 * "LOGIN name pass" for c, in a new buffer of *len_r bytes (not
 * NUL-terminated). name is c->user, or with an authz Dovecot's master
 * login "authz<sep>user". Printable ASCII goes as quoted strings; anything
 * else as a LITERAL+ literal when literal_plus, else it cannot be sent.
 * NULL with *err_r set: "out of memory", or "credentials cannot be sent
 * with LOGIN to this backend".
 */
char *imap_login_cmd(const struct imap_creds *c, const char *sep, bool literal_plus, size_t *len_r,
                     const char **err_r);

/* Whether a login's NO, resp-text rest[0..len), says the server cannot take
 * the login now ([UNAVAILABLE], [LIMIT]) rather than that the credentials
 * are wrong. */
bool imap_login_no_unavailable(const uint8_t *rest, size_t len);

#endif
