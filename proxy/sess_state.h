/*
 * sess_state — the states of a client session and which moves between
 * them are legal. Pure (no I/O): session.c's sess_to()/sess_px_to() ask it
 * before every change, and tests/unit/test_sess_state.c checks the table.
 *
 *   NEW -> [PROXYHDR] -> [HANDSHAKE] -> PREAUTH <-> STARTTLS -> HANDSHAKE -> PREAUTH
 *   PREAUTH -> LOGIN -> PROXYING          LOGIN -> PREAUTH (refused, unavailable)
 *   any but DEAD -> CLOSING -> DEAD
 *
 * While PROXYING, a sub-state says what the pump waits for:
 *
 *   NORMAL -> LIT_WAIT | LIT_OWN_WAIT -> NORMAL     a literal's "+" or refusal
 *   NORMAL -> IDLE_WAIT -> IDLING -> NORMAL         IDLE's "+", then DONE
 *             IDLE_WAIT -> NORMAL                   IDLE refused
 *   NORMAL -> LOGOUT_WAIT <-> LOGOUT_RESET          LOGOUT taken by the proxy
 *
 *   IDLING -> PARK_DONE -> NORMAL                   the proxy's DONE, before parking
 *   NORMAL -> WAKE_SYNC -> NORMAL                   a woken session resynchronizing
 *
 * Parked IDLE (park.c): a quiet session gives its backend up and the proxy
 * answers for it; a wake takes a backend again (kept session or login with
 * master credentials, no client command) and resynchronizes the client:
 *
 *   PROXYING -> PARKED -> WAKING -> PROXYING (WAKE_SYNC, then NORMAL or PARKED)
 */
#ifndef IMAPMUX_SESS_STATE_H
#define IMAPMUX_SESS_STATE_H

#include <stdbool.h>

enum sess_state {
	SESS_NEW,       /* accepted; nothing decided yet */
	SESS_PROXYHDR,  /* proxy_protocol listener: reading the PROXY header, byte-exact
	                 * (MSG_PEEK), so that nothing of the client's own stream is
	                 * taken; nothing sent yet */
	SESS_HANDSHAKE, /* TLS handshake (implicit, or after STARTTLS) running */
	SESS_PREAUTH,   /* greeted; the proxy answers commands itself */
	SESS_STARTTLS,  /* "OK Begin TLS" flushing; client input ignored */
	SESS_LOGIN,     /* credentials with the login pipeline; client input paused */
	SESS_PROXYING,  /* logged in; streams parsed and forwarded (sub-state: px) */
	SESS_PARKED,    /* logged in, no backend: the proxy answers (park.c) */
	SESS_WAKING,    /* parked, taking a backend again (kept session or login) */
	SESS_CLOSING,   /* last words flushing, then freed */
	SESS_DEAD,      /* on the reaper's list */
};
#define SESS_NSTATES (SESS_DEAD + 1)

enum sess_px {
	PX_NORMAL,       /* commands and answers flow */
	PX_LIT_WAIT,     /* the client's {n} sent: its "+" (passed on) or a refusal next;
	                  * client input held */
	PX_LIT_OWN_WAIT, /* the client's {n+} sent on as {n}: the "+" is the proxy's */
	PX_IDLE_WAIT,    /* IDLE sent: "+" (then the next line is DONE) or a refusal */
	PX_IDLING,       /* the backend is in IDLE: the client's next line is DONE */
	PX_LOGOUT_WAIT,  /* LOGOUT taken by the proxy: earlier commands finishing */
	PX_LOGOUT_RESET, /* ... and the proxy's UNSELECT is out: its answer is not
	                  * for the client */
	PX_PARK_DONE,    /* parking: the proxy ended the client's IDLE at the backend;
	                  * its tagged OK is not for the client (still in IDLE) */
	PX_WAKE_SYNC,    /* woken: the proxy's ENABLE/SELECT/FETCH are running; client
	                  * input held */
};
#define SESS_NPX (PX_WAKE_SYNC + 1)

bool sess_move_ok(enum sess_state from, enum sess_state to);
bool sess_px_move_ok(enum sess_px from, enum sess_px to);

/* Static names for log lines ("?" out of range). */
const char *sess_state_name(enum sess_state st);
const char *sess_px_name(enum sess_px px);

#endif
