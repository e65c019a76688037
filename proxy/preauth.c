/*
 * preauth — a client before login: the greeting, the commands imapmux
 * answers itself (CAPABILITY, NOOP, ID, LOGOUT, STARTTLS), and LOGIN /
 * AUTHENTICATE PLAIN, whose credentials go to the login pipeline
 * (login.c) once their form is right.
 *
 *   client.in --ctok--> cmd (one whole command, bounded) --imap_cmd_parse--> answer
 *
 * A command is assembled whole (line parts and literal bodies) in a
 * bounded buffer: before authentication everything is bounded (line,
 * literal, command, invalid commands, and output: a command is taken only
 * while client.out has PREAUTH_ROOM). Credentials are wiped from the
 * buffer once handed on.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "imap_args.h"
#include "sess.h"

/* ---- pre-login --------------------------------------------------------- */

static bool sess_plaintext_ok(const struct session *s)
{
	return s->tls_active || s->lcfg->allow_plaintext_auth;
}

/* Answer NO when credentials would cross the network in clear. */
static bool sess_refuse_plaintext(struct session *s, const char *tag)
{
	if (sess_plaintext_ok(s))
		return false;
	sess_reply(s,
	           "%s NO [PRIVACYREQUIRED] Plaintext authentication disallowed "
	           "on non-secure (SSL/TLS) connections.",
	           tag);
	return true;
}

void preauth_greet(struct session *s)
{
	sess_to(s, SESS_PREAUTH);
	s->client.want_input = true;
	sess_reply(s, "* OK [CAPABILITY %s] %s ready.",
	           runtime_preauth_caps(s->lcfg, s->tls_active), IMAPMUX_NAME);
}

static bool arg_is_string(const struct imap_arg *a)
{
	return a->type == IMAP_ARG_ATOM || a->type == IMAP_ARG_QUOTED ||
	       a->type == IMAP_ARG_LITERAL;
}

static void sess_bad(struct session *s, const char *tag, size_t tag_len, const char *why)
{
	s->nbad++;
	STAT_INC(&s->w->stats, preauth_bad);
	if (tag_len > 0)
		sess_reply(s, "%.*s BAD %s", (int)tag_len, tag, why);
	else
		sess_reply(s, "* BAD %s", why);
	if (s->nbad >= PREAUTH_MAX_BAD)
		sess_close(s, "too many invalid commands", "* BYE Too many invalid commands.");
}

static bool has_master_separator(const struct cfg *cfg, const uint8_t *user, size_t ulen)
{
	for (size_t i = 0; i < cfg->nbackends; i++) {
		const char *sep = cfg->backends[i].master_separator;
		size_t sl = strlen(sep);
		for (size_t j = 0; sl > 0 && j + sl <= ulen; j++) {
			if (memcmp(user + j, sep, sl) == 0)
				return true;
		}
	}
	return false;
}

/* The login pipeline's answer to the client's LOGIN or AUTHENTICATE. */
static void preauth_login_done(struct session *s, enum login_result r, struct backend *b,
                               bool reused)
{
	if (r == LOGIN_OK) {
		pump_attach(s, b, reused);
		return;
	}
	sess_to(s, SESS_PREAUTH);
	s->client.want_input = true;
	if (r == LOGIN_AUTH_FAILED)
		sess_reply(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed.", s->tag);
	else if (r == LOGIN_AUTHZ_FAILED)
		sess_reply(s, "%s NO [AUTHORIZATIONFAILED] Authorization identity not allowed.",
		           s->tag);
	else
		sess_reply(s, "%s NO [UNAVAILABLE] Backend unavailable.", s->tag);
	/* Run from a fresh callback: the caller may be a Redis or timer one. */
	sess_run_soon(s);
}

/* Check the credentials' form and start the login pipeline. */
static void sess_start_login(struct session *s, const uint8_t *user, size_t ulen,
                             const uint8_t *pass, size_t plen)
{
	const char *bad = NULL;

	sess_set_user(s, user, ulen);
	if (ulen == 0 || ulen > USER_MAX || plen == 0)
		bad = "empty or over-long user name or password";
	for (size_t i = 0; bad == NULL && i < ulen; i++) {
		if (user[i] < 0x20 || user[i] == 0x7f)
			bad = "control byte in user name";
	}
	for (size_t i = 0; bad == NULL && i < plen; i++) {
		if (pass[i] == '\0' || pass[i] == '\r' || pass[i] == '\n')
			bad = "forbidden byte in password";
	}
	/* Never let a client reach "user*master" logins on a backend. */
	if (bad == NULL && has_master_separator(s->rt->cfg, user, ulen))
		bad = "master-user separator in user name";
	if (bad != NULL) {
		char what[128];
		snprintf(what, sizeof(what), "login refused: %s", bad);
		sess_log(s, LOG_LVL_WARN, what);
		STAT_INC(&s->w->stats, logins_auth_failed);
		sess_reply(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed.", s->tag);
		return;
	}
	struct login_req rq = {
	    .user = user, .ulen = ulen, .pass = pass, .plen = plen, .done = preauth_login_done};
	sess_to(s, SESS_LOGIN);
	s->client.want_input = false;
	if (login_start(s, &rq) < 0) {
		sess_to(s, SESS_PREAUTH);
		s->client.want_input = true;
		sess_reply(s, "%s NO [UNAVAILABLE] Out of memory.", s->tag);
	}
}

/* SASL PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd, base64. */
static void sess_sasl_plain(struct session *s, const uint8_t *b64, size_t len)
{
	uint8_t raw[1024];
	size_t rawlen = 0;
	const uint8_t *n1, *n2;

	if (len == 1 && b64[0] == '=')
		len = 0;
	if (b64_decode((const char *)b64, len, raw, sizeof(raw), &rawlen) < 0) {
		sess_bad(s, s->tag, strlen(s->tag), "Invalid base64 data in AUTHENTICATE.");
		return;
	}
	n1 = memchr(raw, '\0', rawlen);
	n2 = n1 ? memchr(n1 + 1, '\0', rawlen - (size_t)(n1 + 1 - raw)) : NULL;
	if (n1 == NULL || n2 == NULL) {
		sess_reply(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed.", s->tag);
		goto out;
	}
	const uint8_t *authz = raw, *authc = n1 + 1, *pass = n2 + 1;
	size_t authz_len = (size_t)(n1 - raw), authc_len = (size_t)(n2 - authc);
	size_t pass_len = rawlen - (size_t)(pass - raw);
	if (authz_len > 0 && (authz_len != authc_len || memcmp(authz, authc, authc_len) != 0)) {
		sess_set_user(s, authc, authc_len);
		sess_log(s, LOG_LVL_WARN, "login refused: SASL authorization identity differs");
		sess_reply(s, "%s NO [AUTHORIZATIONFAILED] Authorization identity not allowed.",
		           s->tag);
		goto out;
	}
	s->method = "authenticate";
	sess_start_login(s, authc, authc_len, pass, pass_len);
out:
	explicit_bzero(raw, sizeof(raw));
}

static bool id_args_ok(const struct imap_cmd *c)
{
	size_t i, pairs = 0;

	if (c->nargs == 1 && c->args[0].type == IMAP_ARG_ATOM &&
	    imap_word_eq(c->args[0].data, c->args[0].len, "NIL"))
		return true;
	if (c->nargs < 2 || c->args[0].type != IMAP_ARG_LIST_OPEN ||
	    c->args[c->nargs - 1].type != IMAP_ARG_LIST_CLOSE)
		return false;
	for (i = 1; i + 1 < c->nargs; i++) {
		if (c->args[i].type == IMAP_ARG_LIST_OPEN || c->args[i].type == IMAP_ARG_LIST_CLOSE)
			return false;
		pairs++;
	}
	return pairs % 2 == 0 && pairs <= 60;
}

static void sess_cmd_starttls(struct session *s, const struct imap_cmd *c)
{
	const char *tag = s->tag;

	if (c->nargs != 0) {
		sess_bad(s, tag, strlen(tag), "STARTTLS takes no arguments.");
		return;
	}
	if (s->lcfg->tls != CFG_TLS_STARTTLS || s->tls_active) {
		sess_bad(s, tag, strlen(tag),
		         s->tls_active ? "TLS is already active." : "STARTTLS is not available.");
		return;
	}
	sess_reply(s, "%s OK Begin TLS negotiation now.", tag);
	/* Whatever the client sent after STARTTLS was sent in the clear and
	 * must not be taken as coming over TLS (plaintext command injection). */
	if (!buf_is_empty(&s->client.in)) {
		char what[96];
		snprintf(what, sizeof(what), "discarded %zu bytes pipelined after STARTTLS",
		         buf_len(&s->client.in));
		sess_log(s, LOG_LVL_WARN, what);
		buf_consume(&s->client.in, buf_len(&s->client.in));
	}
	sess_to(s, SESS_STARTTLS);
	s->client.want_input = false;
}

/* Run one complete pre-login command from s->cmd. */
static void sess_preauth_command(struct session *s)
{
	struct imap_cmd c;
	const char *err = NULL;
	uint8_t *p = s->cmd.data + s->cmd.start;
	size_t len = buf_len(&s->cmd);

	if (imap_cmd_parse(p, len, &c, &err) < 0) {
		sess_bad(s, (const char *)c.tag, c.tag_len, err ? err : "Invalid command.");
		return;
	}
	if (c.tag_len > TAG_MAX) {
		sess_bad(s, NULL, 0, "Tag too long.");
		return;
	}
	sess_set_tag(s, c.tag, c.tag_len);
	const char *tag = s->tag;
	const uint8_t *name = c.name;
	size_t nlen = c.name_len;

	if (imap_word_eq(name, nlen, "CAPABILITY") && c.nargs == 0) {
		sess_reply(s, "* CAPABILITY %s", runtime_preauth_caps(s->lcfg, s->tls_active));
		sess_reply(
		    s, "%s OK Pre-login capabilities listed, post-login capabilities have more.",
		    tag);
	} else if (imap_word_eq(name, nlen, "NOOP") && c.nargs == 0) {
		sess_reply(s, "%s OK NOOP completed.", tag);
	} else if (imap_word_eq(name, nlen, "LOGOUT") && c.nargs == 0) {
		sess_reply(s, "* BYE Logging out");
		sess_reply(s, "%s OK Logout completed.", tag);
		sess_close(s, "logout", NULL);
	} else if (imap_word_eq(name, nlen, "ID")) {
		if (!id_args_ok(&c)) {
			sess_bad(s, tag, strlen(tag), "Invalid ID arguments.");
			return;
		}
		sess_reply(s, "* ID (\"name\" \"%s\" \"version\" \"%s\")", IMAPMUX_NAME,
		           IMAPMUX_VERSION);
		sess_reply(s, "%s OK ID completed.", tag);
	} else if (imap_word_eq(name, nlen, "STARTTLS")) {
		sess_cmd_starttls(s, &c);
	} else if (imap_word_eq(name, nlen, "LOGIN")) {
		if (c.nargs != 2 || !arg_is_string(&c.args[0]) || !arg_is_string(&c.args[1])) {
			sess_bad(s, tag, strlen(tag), "Invalid arguments.");
			return;
		}
		if (sess_refuse_plaintext(s, tag))
			return;
		s->method = "login";
		sess_start_login(s, c.args[0].data, c.args[0].len, c.args[1].data, c.args[1].len);
	} else if (imap_word_eq(name, nlen, "AUTHENTICATE")) {
		if (c.nargs < 1 || c.nargs > 2 || c.args[0].type != IMAP_ARG_ATOM ||
		    (c.nargs == 2 && c.args[1].type != IMAP_ARG_ATOM)) {
			sess_bad(s, tag, strlen(tag), "Invalid arguments.");
			return;
		}
		if (sess_refuse_plaintext(s, tag))
			return;
		if (!imap_word_eq(c.args[0].data, c.args[0].len, "PLAIN")) {
			sess_reply(s, "%s NO Unsupported authentication mechanism.", tag);
			return;
		}
		if (c.nargs == 2) {
			sess_sasl_plain(s, c.args[1].data, c.args[1].len);
		} else {
			sess_reply(s, "+ ");
			s->sasl_wait = true;
		}
	} else {
		sess_bad(s, tag, strlen(tag), "Unknown command or not valid before login.");
	}
}

/* The client's answer to "+ " in AUTHENTICATE: one line, base64 or "*". */
static void sess_sasl_response(struct session *s, const uint8_t *line, size_t len)
{
	s->sasl_wait = false;
	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	if (len == 1 && line[0] == '*') {
		sess_reply(s, "%s BAD Authentication aborted by client.", s->tag);
		return;
	}
	sess_sasl_plain(s, line, len);
}

void preauth_cmd_reset(struct session *s)
{
	if (s->cmd.data != NULL)
		explicit_bzero(s->cmd.data, s->cmd.cap);
	buf_consume(&s->cmd, buf_len(&s->cmd));
}

/* Take complete pre-login commands from client.in. True on progress. */
bool preauth_input(struct session *s)
{
	bool progress = false;

	while (s->state == SESS_PREAUTH && !buf_is_empty(&s->client.in) &&
	       buf_room(&s->client.out) >= PREAUTH_ROOM) {
		struct imap_tok_unit u;
		const uint8_t *p = buf_head(&s->client.in);
		int r = imap_tok_next(&s->ctok, p, buf_len(&s->client.in), &u);

		if (r == -2)
			break;
		if (r < 0) {
			const char *e = imap_tok_error(&s->ctok);
			char bye[128];
			snprintf(bye, sizeof(bye), "* BYE %s.", e ? e : "Protocol error");
			sess_close(s, e ? e : "protocol error", bye);
			return true;
		}
		progress = true;
		if (s->sasl_wait) {
			if (u.type != IMAP_TOK_LINE || !u.last) {
				sess_close(s, "bad AUTHENTICATE response",
				           "* BYE Invalid AUTHENTICATE response.");
				return true;
			}
			uint8_t line[PREAUTH_MAX_LINE];
			memcpy(line, p, u.len);
			imap_tok_consume(&s->ctok, &u, u.len);
			buf_consume(&s->client.in, u.len);
			sess_sasl_response(s, line, u.len);
			explicit_bzero(line, u.len);
			continue;
		}
		if (buf_append(&s->cmd, p, u.len) < 0) {
			sess_close(s, "command too long", "* BYE Command too long.");
			return true;
		}
		imap_tok_consume(&s->ctok, &u, u.len);
		buf_consume(&s->client.in, u.len);
		if (u.type == IMAP_TOK_LINE && u.has_literal && !u.lit_nonsync && u.literal > 0)
			sess_reply(s, "+ Ready for literal data.");
		if (u.type == IMAP_TOK_LINE && u.last) {
			sess_preauth_command(s);
			preauth_cmd_reset(s);
		}
	}
	return progress;
}

void preauth_tls_up(struct session *s)
{
	s->tls_active = true;
	if (s->starttls_done) {
		sess_to(s, SESS_PREAUTH);
		s->client.want_input = true;
	} else {
		preauth_greet(s);
	}
}
