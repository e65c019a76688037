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
	           runtime_preauth_caps(s->lcfg, s->tls_active, s->rt->cfg->oauth), IMAPMUX_NAME);
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
                             const uint8_t *pass, size_t plen, const char *mech)
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
	struct login_req rq = {.user = user,
	                       .ulen = ulen,
	                       .pass = pass,
	                       .plen = plen,
	                       .mech = mech,
	                       .done = preauth_login_done};
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
	sess_start_login(s, authc, authc_len, pass, pass_len, NULL);
out:
	explicit_bzero(raw, sizeof(raw));
}

/* Which answer to AUTHENTICATE the client owes (s->sasl). */
enum sasl_step {
	SASL_NONE,
	SASL_PLAIN,       /* "+ " sent: the PLAIN response */
	SASL_LOGIN_USER,  /* "+ VXNlcm5hbWU6" ("Username:") sent */
	SASL_LOGIN_PASS,  /* "+ UGFzc3dvcmQ6" ("Password:") sent; the name heads s->cmd */
	SASL_XOAUTH2,     /* "+ " sent: the XOAUTH2 message */
	SASL_OAUTHBEARER, /* "+ " sent: the OAUTHBEARER message (RFC 7628) */
};

static void sasl_clear(struct session *s)
{
	s->sasl_ulen = 0;
	s->sasl = SASL_NONE;
}

/* SASL LOGIN (draft-murchison-sasl-login, what Outlook and many phones
 * offer): the user name, then the password, each base64 in its own
 * response; with SASL-IR the initial response is the user name. Between
 * the two the decoded name heads s->cmd (cmd_done keeps it). */
static void sess_sasl_login(struct session *s, const uint8_t *b64, size_t len)
{
	uint8_t raw[1024];
	size_t rawlen = 0;

	if (len == 1 && b64[0] == '=')
		len = 0;
	if (b64_decode((const char *)b64, len, raw, sizeof(raw), &rawlen) < 0) {
		sasl_clear(s);
		sess_bad(s, s->tag, strlen(s->tag), "Invalid base64 data in AUTHENTICATE.");
		goto out;
	}
	if (s->sasl != SASL_LOGIN_PASS) {
		/* The name is never longer than its base64 form, which cmd holds
		 * (the command or this response): it goes in place. */
		memcpy(s->cmd.data + s->cmd.start, raw, rawlen);
		s->sasl_ulen = (uint16_t)rawlen;
		s->sasl = SASL_LOGIN_PASS;
		sess_reply(s, "+ UGFzc3dvcmQ6");
		goto out;
	}
	const uint8_t *user = s->cmd.data + s->cmd.start;
	size_t ulen = s->sasl_ulen;
	sasl_clear(s);
	s->method = "authenticate";
	sess_start_login(s, user, ulen, raw, rawlen, NULL);
out:
	explicit_bzero(raw, sizeof(raw));
}

/* The user an OAuth message names, into out (at most cap bytes); its
 * length, or -1 without one. XOAUTH2: "user=" U ^A "auth=Bearer " T ^A ^A.
 * OAUTHBEARER (RFC 7628 3.1): a GS2 header "n,a=" U "," (U with "=2C" for
 * "," and "=3D" for "="), then ^A key=value pairs. */
static long oauth_user(const uint8_t *m, size_t n, bool bearer, uint8_t *out, size_t cap)
{
	size_t i, o = 0;

	if (!bearer) {
		if (n < 5 || memcmp(m, "user=", 5) != 0)
			return -1;
		for (i = 5; i < n && m[i] != 0x01; i++) {
			if (o == cap)
				return -1;
			out[o++] = m[i];
		}
		return i < n ? (long)o : -1;
	}
	/* gs2-cb-flag ("n", "y" or "p=..."), then "," authzid? "," */
	const uint8_t *comma = memchr(m, ',', n);
	if (comma == NULL)
		return -1;
	i = (size_t)(comma - m) + 1;
	if (n - i < 2 || m[i] != 'a' || m[i + 1] != '=')
		return -1;
	for (i += 2; i < n && m[i] != ','; i++) {
		uint8_t c = m[i];
		if (c == '=') {
			if (n - i < 3)
				return -1;
			if (m[i + 1] == '2' && (m[i + 2] == 'C' || m[i + 2] == 'c'))
				c = ',';
			else if (m[i + 1] == '3' && (m[i + 2] == 'D' || m[i + 2] == 'd'))
				c = '=';
			else
				return -1;
			i += 2;
		}
		if (o == cap)
			return -1;
		out[o++] = c;
	}
	return i < n ? (long)o : -1;
}

/* XOAUTH2 and OAUTHBEARER (oauth = yes, auth = backend): imapmux cannot
 * check a bearer token, so the whole message goes to the backend, routed by
 * the user it names; the backend's answer decides. */
static void sess_sasl_oauth(struct session *s, const uint8_t *b64, size_t len, bool bearer)
{
	uint8_t raw[PREAUTH_MAX_LINE], user[USER_MAX + 1];
	size_t rawlen = 0;

	s->sasl = SASL_NONE;
	if (b64_decode((const char *)b64, len, raw, sizeof(raw), &rawlen) < 0) {
		sess_bad(s, s->tag, strlen(s->tag), "Invalid base64 data in AUTHENTICATE.");
		return;
	}
	long ulen = oauth_user(raw, rawlen, bearer, user, sizeof(user));
	if (ulen <= 0) {
		sess_log(s, LOG_LVL_WARN, "login refused: OAuth message names no user");
		STAT_INC(&s->w->stats, logins_auth_failed);
		sess_reply(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed.", s->tag);
	} else {
		s->method = "authenticate";
		sess_start_login(s, user, (size_t)ulen, raw, rawlen,
		                 bearer ? "OAUTHBEARER" : "XOAUTH2");
	}
	explicit_bzero(raw, sizeof(raw));
	explicit_bzero(user, sizeof(user));
}

/* AUTHENTICATE mech [initial-response]: PLAIN and LOGIN; XOAUTH2 and
 * OAUTHBEARER with oauth = yes. */
static void sess_cmd_authenticate(struct session *s, const struct imap_cmd *c)
{
	const char *tag = s->tag;

	if (c->nargs < 1 || c->nargs > 2 || c->args[0].type != IMAP_ARG_ATOM ||
	    (c->nargs == 2 && c->args[1].type != IMAP_ARG_ATOM)) {
		sess_bad(s, tag, strlen(tag), "Invalid arguments.");
		return;
	}
	if (sess_refuse_plaintext(s, tag))
		return;
	const struct imap_arg *mech = &c->args[0];
	const struct imap_arg *ir = c->nargs == 2 ? &c->args[1] : NULL;
	if (imap_word_eq(mech->data, mech->len, "PLAIN")) {
		if (ir != NULL) {
			sess_sasl_plain(s, ir->data, ir->len);
		} else {
			sess_reply(s, "+ ");
			s->sasl = SASL_PLAIN;
		}
	} else if (imap_word_eq(mech->data, mech->len, "LOGIN")) {
		s->sasl = SASL_LOGIN_USER;
		if (ir != NULL)
			sess_sasl_login(s, ir->data, ir->len);
		else
			sess_reply(s, "+ VXNlcm5hbWU6");
	} else if (s->rt->cfg->oauth && (imap_word_eq(mech->data, mech->len, "XOAUTH2") ||
	                                 imap_word_eq(mech->data, mech->len, "OAUTHBEARER"))) {
		bool bearer = imap_word_eq(mech->data, mech->len, "OAUTHBEARER");
		if (ir != NULL) {
			sess_sasl_oauth(s, ir->data, ir->len, bearer);
		} else {
			sess_reply(s, "+ ");
			s->sasl = bearer ? SASL_OAUTHBEARER : SASL_XOAUTH2;
		}
	} else {
		sess_reply(s, "%s NO Unsupported authentication mechanism.", tag);
	}
}

/* Printable ASCII of v[0..len), at most cap - 1 bytes, for a log field. */
static void id_field_text(char *out, size_t cap, const struct imap_arg *v)
{
	size_t n = 0;

	if (v->type != IMAP_ARG_QUOTED && v->type != IMAP_ARG_LITERAL && v->type != IMAP_ARG_ATOM) {
		out[0] = '\0';
		return;
	}
	for (size_t i = 0; i < v->len && n + 1 < cap; i++)
		out[n++] = (v->data[i] >= 0x20 && v->data[i] < 0x7f) ? (char)v->data[i] : '?';
	out[n] = '\0';
}

/* Log what the client says it is (RFC 2971 "name" and "version"): operators
 * tell clients apart by it. */
static void id_log(struct session *s, const struct imap_cmd *c)
{
	char name[65] = "", version[65] = "", id[32];

	if (!log_enabled(LOG_LVL_INFO) || c->nargs < 2)
		return;
	for (size_t i = 1; i + 2 < c->nargs; i += 2) {
		const struct imap_arg *f = &c->args[i], *v = &c->args[i + 1];
		if (v->type == IMAP_ARG_ATOM && imap_word_eq(v->data, v->len, "NIL"))
			continue;
		if (imap_word_eq(f->data, f->len, "name"))
			id_field_text(name, sizeof(name), v);
		else if (imap_word_eq(f->data, f->len, "version"))
			id_field_text(version, sizeof(version), v);
	}
	snprintf(id, sizeof(id), "S-%lu", s->id);
	const struct log_field fl[] = {
	    {"event", "client_id", false}, {"session", id, false},      {"client", s->peer, false},
	    {"name", name, false},         {"version", version, false},
	};
	log_fields(LOG_LVL_INFO, "client id", fl, sizeof(fl) / sizeof(fl[0]));
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
		sess_reply(s, "* CAPABILITY %s",
		           runtime_preauth_caps(s->lcfg, s->tls_active, s->rt->cfg->oauth));
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
		id_log(s, &c);
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
		sess_start_login(s, c.args[0].data, c.args[0].len, c.args[1].data, c.args[1].len,
		                 NULL);
	} else if (imap_word_eq(name, nlen, "AUTHENTICATE")) {
		sess_cmd_authenticate(s, &c);
	} else {
		sess_bad(s, tag, strlen(tag), "Unknown command or not valid before login.");
	}
}

/* The client's answer to a "+" of AUTHENTICATE: one line, base64 or "*". */
static void sess_sasl_response(struct session *s)
{
	size_t keep = s->sasl == SASL_LOGIN_PASS ? s->sasl_ulen : 0;
	const uint8_t *line = s->cmd.data + s->cmd.start + keep;
	size_t len = buf_len(&s->cmd) - keep;

	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	if (len == 1 && line[0] == '*') {
		sasl_clear(s);
		sess_reply(s, "%s BAD Authentication aborted by client.", s->tag);
		return;
	}
	if (s->sasl == SASL_PLAIN) {
		s->sasl = SASL_NONE;
		sess_sasl_plain(s, line, len);
	} else if (s->sasl == SASL_XOAUTH2 || s->sasl == SASL_OAUTHBEARER) {
		sess_sasl_oauth(s, line, len, s->sasl == SASL_OAUTHBEARER);
	} else {
		sess_sasl_login(s, line, len);
	}
}

/* Wipe the command just run (credentials may be in it); an ID's widened
 * buffer goes back to the usual size. */
static void cmd_done(struct session *s)
{
	size_t keep = s->sasl == SASL_LOGIN_PASS ? s->sasl_ulen : 0;

	if (s->cmd.data != NULL) {
		/* Compacted first: the kept name is at the front, the rest wiped. */
		if (s->cmd.start > 0) {
			memmove(s->cmd.data, s->cmd.data + s->cmd.start, keep);
			s->cmd.end -= s->cmd.start;
			s->cmd.start = 0;
		}
		explicit_bzero(s->cmd.data + keep, s->cmd.cap - keep);
		s->cmd.end = keep;
	}
	if (keep > 0) {
		s->cmd_part = 0;
		return;
	}
	buf_consume(&s->cmd, buf_len(&s->cmd));
	if (s->cmd.cap != PREAUTH_MAX_CMD) {
		buf_free(&s->cmd);
		buf_init(&s->cmd, PREAUTH_MAX_CMD);
		s->w->wide_cmds--;
	}
	s->cmd_part = 0;
}

void preauth_cmd_reset(struct session *s)
{
	sasl_clear(s); /* first: nothing is kept */
	cmd_done(s);
}

void preauth_tok_init(struct session *s)
{
	/* Fragments: an ID's line may be longer than client.in; every other
	 * line part is held to PREAUTH_MAX_LINE by preauth_input. */
	struct imap_tok_limits lim = {.max_line = PREAUTH_ID_MAX,
	                              .frag_size = STREAM_FRAG,
	                              .max_literal = PREAUTH_MAX_LITERAL};
	imap_tok_init(&s->ctok, IMAP_TOK_COMMANDS, &lim);
}

/* Is the command being assembled (its start in cmd, or in p when cmd is
 * still empty) an ID? Only an ID may pass PREAUTH_MAX_LINE and _CMD. */
static bool cmd_is_id(const struct session *s, const uint8_t *p, size_t n)
{
	if (!buf_is_empty(&s->cmd)) {
		p = buf_head(&s->cmd);
		n = buf_len(&s->cmd);
	}
	const uint8_t *sp = memchr(p, ' ', n);
	if (sp == NULL || s->sasl != SASL_NONE)
		return false;
	size_t left = n - (size_t)(sp + 1 - p);
	return left >= 3 && imap_word_eq(sp + 1, 2, "ID") &&
	       (sp[3] == ' ' || sp[3] == '\r' || sp[3] == '\n');
}

/* Give an ID command the room RFC 2971 allows it, while fewer than
 * PREAUTH_ID_WIDE sessions of the worker hold such room: many clients
 * sending long IDs at once cannot take more than that. */
static int cmd_widen(struct session *s)
{
	struct buf wide;

	if (s->cmd.cap >= PREAUTH_ID_MAX || s->w->wide_cmds >= PREAUTH_ID_WIDE)
		return -1;
	buf_init(&wide, PREAUTH_ID_MAX);
	if (buf_append(&wide, buf_head(&s->cmd), buf_len(&s->cmd)) < 0)
		return -1;
	explicit_bzero(s->cmd.data, s->cmd.cap);
	buf_free(&s->cmd);
	s->cmd = wide;
	s->w->wide_cmds++;
	return 0;
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

		if (r == -2) {
			/* The bytes waiting are the start of a line part shorter than
			 * a fragment: past PREAUTH_MAX_LINE already, it ends here, as
			 * soon as the excess byte arrived. */
			size_t len = buf_len(&s->client.in);
			if (s->cmd_part + len > PREAUTH_MAX_LINE && !cmd_is_id(s, p, len)) {
				sess_close(s, "line too long", "* BYE line too long.");
				return true;
			}
			break;
		}
		if (r < 0) {
			const char *e = imap_tok_error(&s->ctok);
			char bye[128];
			snprintf(bye, sizeof(bye), "* BYE %s.", e ? e : "Protocol error");
			sess_close(s, e ? e : "protocol error", bye);
			return true;
		}
		progress = true;
		if (s->sasl != SASL_NONE && u.type == IMAP_TOK_LINE && !u.last) {
			sess_close(s, "bad AUTHENTICATE response",
			           "* BYE Invalid AUTHENTICATE response.");
			return true;
		}
		bool id = false;
		if (u.type != IMAP_TOK_LITERAL) {
			s->cmd_part += (uint32_t)u.len;
			id = s->cmd_part > PREAUTH_MAX_LINE && cmd_is_id(s, p, u.len);
			if (s->cmd_part > PREAUTH_MAX_LINE && !id) {
				sess_close(s, "line too long", "* BYE line too long.");
				return true;
			}
		}
		if (buf_append(&s->cmd, p, u.len) < 0) {
			if (!id && !cmd_is_id(s, p, u.len)) {
				sess_close(s, "command too long", "* BYE Command too long.");
				return true;
			}
			if (s->cmd.cap < PREAUTH_ID_MAX && s->w->wide_cmds >= PREAUTH_ID_WIDE) {
				sess_close(
				    s, "too many long IDs at once",
				    "* BYE [UNAVAILABLE] Too busy for a long ID, try again.");
				return true;
			}
			if (cmd_widen(s) < 0 || buf_append(&s->cmd, p, u.len) < 0) {
				sess_close(s, "command too long", "* BYE Command too long.");
				return true;
			}
		}
		imap_tok_consume(&s->ctok, &u, u.len);
		buf_consume(&s->client.in, u.len);
		if (u.type == IMAP_TOK_LINE)
			s->cmd_part = 0;
		if (u.type == IMAP_TOK_LINE && u.has_literal && !u.lit_nonsync && u.literal > 0)
			sess_reply(s, "+ Ready for literal data.");
		if (u.type == IMAP_TOK_LINE && u.last) {
			if (s->sasl != SASL_NONE)
				sess_sasl_response(s);
			else
				sess_preauth_command(s);
			cmd_done(s);
		}
	}
	return progress;
}

void preauth_tls_up(struct session *s)
{
	s->tls_active = true;
	if (SSL_session_reused(s->client.ssl))
		STAT_INC(&s->w->stats, tls_resumed);
	else
		STAT_INC(&s->w->stats, tls_handshakes);
	if (s->starttls_done) {
		sess_to(s, SESS_PREAUTH);
		s->client.want_input = true;
	} else {
		preauth_greet(s);
	}
}
