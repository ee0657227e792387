/*
 * tracked.js: follow a `tracked` status route from a browser, pushed or polled.
 *
 * Plain ES2017, no dependency, no build step. Load it with a <script> tag and use
 * the global `tracked`, or require() it where `module.exports` exists.
 *
 *   const id = tracked.newProgressId();
 *   fetch('/jobs/main?progress_id=' + id, {method: 'POST'});      // not awaited
 *   const watcher = tracked.trackProgress(tracked.statusUrl('demo-job'), {
 *     progressId: id,
 *     onProgress(state) { bar.style.width = (state.percent || 0) + '%'; },
 *     onMessage(text) { const li = document.createElement('li'); li.textContent = text; list.append(li); },
 *     onSuccess(state) { console.log('finished with', state.result); },
 *     onDone(state) { console.log('ended as', state.state); },
 *     onError(err) { console.error(err.message); },
 *   });
 *   // watcher.stop() stops following; no callback is called after it.
 *   // watcher.cancel() asks the run to stop (DELETE on the status route, allowed
 *   // by the server's `cancel=` option): a Promise of the JSON answer (the state
 *   // with a 202, else {error, status: 'error'}); following goes on (polled or
 *   // streamed), and the final state reaches onProgress, then onCancel(state) and
 *   // onDone(state).
 *
 * `transport` picks how states arrive; the callbacks are the same whichever runs:
 *   'auto' (default): the first state is polled (a 404 while the job starts is
 *     waited out as usual); when that answer says the server streams (header
 *     `X-Tracked-Events: 1`), Server-Sent Events follow it (`EventSource`, same
 *     URL, `Accept: text/event-stream`), else it keeps polling, so a server with
 *     streams off never sees an EventSource (and the console shows no error).
 *     When a stream fails twice without delivering anything (a proxy breaks
 *     them), the tracker polls instead, with its backoff. No EventSource: it polls.
 *   'sse': streams only; each failed stream counts as a failed poll (backoff,
 *     then `gave_up` after maxRetries).
 *   'poll': polls every `interval` ms.
 * `watcher.transport` says which one is running now ('poll' or 'sse').
 *
 * `tracked.stateText(state)` says a state as people read it: 'running,
 * stopping…' after a stop was asked, 'queued (2nd in line)', 'finished (a stop
 * was asked but the task did not stop)'; the state word otherwise.
 *
 * `tracked.statusUrl(name, {prefix})` builds the status URL of any progress name
 * so that browsers request it unchanged: a name with a `.` or `..` segment, or
 * one that starts with `/`, is sent as one segment (`/` as `%2F`, so no prefix
 * makes `//host`), a name that is `.` or `..` as `?name=`.
 *
 * Each poll asks for `?since=N` (N = messages received so far), so every message is
 * downloaded and reported once. If the server has dropped messages the client never
 * saw (it keeps only the newest ones), `onGap(n)` is called; without an `onGap`
 * option, `onMessage` is called once with a placeholder text naming how many.
 */
(function (root, factory) {
  'use strict';
  const api = factory();
  if (typeof module === 'object' && module && module.exports) {
    module.exports = api;
  }
  if (root) {
    root.tracked = api;
  }
})(typeof globalThis !== 'undefined' ? globalThis : this, function () {
  'use strict';

  /** The header a status answer carries to say whether the same URL streams events. */
  const STREAM_HEADER = 'X-Tracked-Events';

  const DEFAULTS = {
    transport: 'auto', // 'auto', 'sse' or 'poll': see the file header
    interval: 500, // ms between the end of one poll and the start of the next
    progressId: null, // sent as ?progress_id=
    startTimeout: 10000, // ms during which a 404 means "not started yet"
    requestTimeout: 15000, // ms before one poll is abandoned as a network error
    maxRetries: 8, // consecutive failed polls (network, timeout, 5xx) before giving up
    maxBackoff: 10000, // ms, the longest wait between two failed polls
    onProgress: null, // (state) after every changed state
    onMessage: null, // (text, index) once per message, in order
    onGap: null, // (count, firstIndex) when the server dropped messages never received
    onWaiting: null, // (elapsedMs) for each 404 inside startTimeout
    onSuccess: null, // (state) once, before onDone, when it finished; state.result is its result
    onCancel: null, // (state) once, before onDone, when it ended cancelled (asked to stop)
    onDone: null, // (state) once, when the progress is no longer in progress
    onError: null, // (err) once, when tracking gives up; err.kind and err.status say why
  };

  /** Start following `url`; returns {stop(), cancel(), stopped, transport}. See the file header. */
  function trackProgress(url, options) {
    if (typeof url !== 'string' || !url) {
      throw new TypeError('trackProgress(url, options): url must be a non-empty string');
    }
    const opts = Object.assign({}, DEFAULTS, options || {});
    if (['auto', 'sse', 'poll'].indexOf(opts.transport) === -1) {
      throw new TypeError("trackProgress: transport must be 'auto', 'sse' or 'poll', got " + opts.transport);
    }
    const tracker = new Tracker(url, opts);
    tracker.poll();
    return {
      stop: function () {
        tracker.stop();
      },
      get stopped() {
        return tracker.stopped;
      },
      get transport() {
        return tracker.source ? 'sse' : 'poll';
      },
      cancel: function () {
        return tracker.cancel();
      },
    };
  }

  function Tracker(url, opts) {
    this.url = url;
    this.opts = opts;
    this.cursor = 0; // index of the next message to report
    this.etag = null;
    this.failures = 0;
    this.seen = false; // a state has been received at least once
    this.runStart = null; // start_time of the run being followed
    this.startedAt = Date.now();
    this.stopped = false;
    this.timer = null;
    this.controller = null;
    this.source = null; // the open EventSource, if any
    this.streamOpened = false; // the current stream said 200 since its last error
    this.streamFailures = 0; // streams in a row that failed before delivering a state
    this.streaming = opts.transport !== 'poll' && typeof EventSource === 'function';
    if (opts.transport === 'sse' && typeof EventSource !== 'function') {
      this.streaming = false;
    }
  }

  Tracker.prototype.stop = function () {
    this.stopped = true;
    this.closeStream();
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.controller) {
      this.controller.abort();
      this.controller = null;
    }
  };

  /**
   * Ask the run to stop: DELETE on the status URL (with the progressId). Resolves
   * with the JSON answer and its HTTP status as `answer.httpStatus` (202: asked;
   * 404, 409, 412, 403, 405: see `answer.error`); rejects on a network failure. The
   * tracker keeps following (an open stream pushes the final state; a poller looks
   * again soon), so the final state arrives by the usual callbacks. Once a state
   * was seen, the DELETE carries `If-Match` naming its run (its start time in whole
   * microseconds, the first part of the route's ETags): when the name has been
   * started again since, the answer is 412 and the new run goes on.
   */
  Tracker.prototype.cancel = async function () {
    let url = this.url;
    if (this.opts.progressId) {
      url += (url.indexOf('?') === -1 ? '?' : '&') + 'progress_id=' + encodeURIComponent(this.opts.progressId);
    }
    const headers = {Accept: 'application/json'};
    if (typeof this.runStart === 'number') {
      headers['If-Match'] = '"' + String(Math.floor(this.runStart * 1e6)) + '"';
    }
    const response = await fetch(url, {
      method: 'DELETE',
      headers: headers,
      cache: 'no-store',
      credentials: 'same-origin',
    });
    const body = (await readJson(response)) || {error: response.statusText, status: 'error'};
    body.httpStatus = response.status;
    if (response.status === 202 && !this.stopped && this.timer !== null) {
      clearTimeout(this.timer); // look again soon: the run stops within about a tick
      this.schedule(Math.min(this.opts.interval, 200));
    }
    return body;
  };

  Tracker.prototype.pollUrl = function () {
    const params = ['since=' + this.cursor];
    if (this.opts.progressId) {
      params.unshift('progress_id=' + encodeURIComponent(this.opts.progressId));
    }
    return this.url + (this.url.indexOf('?') === -1 ? '?' : '&') + params.join('&');
  };

  Tracker.prototype.poll = async function () {
    this.timer = null;
    if (this.stopped) return;
    let response;
    try {
      response = await this.fetch();
    } catch (err) {
      if (!this.stopped) this.failed(err);
      return;
    }
    if (this.stopped) return;
    await this.handle(response);
  };

  Tracker.prototype.fetch = async function () {
    const headers = {Accept: 'application/json'};
    if (this.etag) headers['If-None-Match'] = this.etag;
    const controller = typeof AbortController === 'function' ? new AbortController() : null;
    this.controller = controller;
    const timeout = setTimeout(function () {
      if (controller) controller.abort();
    }, this.opts.requestTimeout);
    try {
      return await fetch(this.pollUrl(), {
        headers: headers,
        cache: 'no-store',
        credentials: 'same-origin',
        signal: controller ? controller.signal : undefined,
      });
    } catch (err) {
      throw trackingError(
        controller && controller.signal.aborted ? 'timeout' : 'network',
        'polling ' + this.url + ' failed: ' + (err && err.message ? err.message : err),
        0,
        null
      );
    } finally {
      clearTimeout(timeout);
      if (this.controller === controller) this.controller = null;
    }
  };

  Tracker.prototype.handle = async function (response) {
    if (response.status === 304) {
      this.failures = 0;
      this.schedule(this.opts.interval);
      return;
    }
    if (response.ok) {
      let state;
      try {
        state = await response.json();
      } catch (err) {
        if (!this.stopped) this.failed(trackingError('bad_response', 'the status route did not answer JSON', response.status, null));
        return;
      }
      if (this.stopped) return;
      this.etag = response.headers.get('ETag');
      this.failures = 0;
      if (this.opts.transport === 'auto' && !this.seen) {
        // The first answer says whether this server streams: no EventSource (and
        // no console error) against one that does not.
        this.streaming = this.streaming && response.headers.get(STREAM_HEADER) === '1';
      }
      this.received(state);
      return;
    }
    const body = await readJson(response);
    if (this.stopped) return;
    const detail = body && typeof body.error === 'string' ? body.error : response.statusText;
    if (response.status === 404 && !this.seen) {
      const waited = Date.now() - this.startedAt;
      if (waited < this.opts.startTimeout) {
        call(this.opts.onWaiting, waited);
        this.schedule(this.opts.interval);
        return;
      }
      return this.fail(trackingError('not_found', 'no progress at ' + this.url + ' after ' + this.opts.startTimeout + ' ms: ' + detail, 404, body));
    }
    if (response.status >= 500 || response.status === 429) {
      return this.failed(trackingError('http', 'HTTP ' + response.status + ' from ' + this.url + ': ' + detail, response.status, body));
    }
    this.fail(trackingError('http', 'HTTP ' + response.status + ' from ' + this.url + ': ' + detail, response.status, body));
  };

  /** Report the messages and state of one answer; finish if the progress ended. */
  Tracker.prototype.received = function (state, fromStream) {
    if (!state || typeof state !== 'object') {
      this.closeStream();
      return this.failed(trackingError('bad_response', 'the status route answered something other than a state', 200, null));
    }
    if (this.seen && state.start_time !== this.runStart && this.cursor > 0) {
      // The name was started again: this answer was cut at the old run's cursor.
      // Start over from its first message rather than skip any of them.
      this.closeStream();
      this.runStart = state.start_time;
      this.cursor = 0;
      this.etag = null;
      this.schedule(0);
      return;
    }
    this.seen = true;
    this.runStart = state.start_time;
    this.deliverMessages(state);
    call(this.opts.onProgress, state);
    if (this.stopped) return;
    if (state.in_progress === false) {
      this.stop();
      if (state.state === 'finished') call(this.opts.onSuccess, state);
      if (state.state === 'cancelled') call(this.opts.onCancel, state);
      call(this.opts.onDone, state);
      return;
    }
    if (fromStream) return;
    if (this.streaming) {
      this.openStream();
    } else {
      this.schedule(this.opts.interval);
    }
  };

  /** Follow the progress with Server-Sent Events from the current cursor on. */
  Tracker.prototype.openStream = function () {
    if (this.stopped) return;
    const self = this;
    const source = new EventSource(this.pollUrl());
    this.source = source;
    this.streamOpened = false;
    source.onopen = function () {
      if (self.source === source) self.streamOpened = true;
    };
    source.onmessage = function (event) {
      if (self.source !== source || self.stopped) return;
      let state;
      try {
        state = JSON.parse(event.data);
      } catch (err) {
        self.closeStream();
        self.failed(trackingError('bad_response', 'the status stream sent something other than JSON', 200, null));
        return;
      }
      self.streamFailures = 0;
      self.failures = 0;
      self.received(state, true);
    };
    source.addEventListener('end', function () {
      // The final state came just before; if it did not reach us, poll for it.
      if (self.source !== source) return;
      self.closeStream();
      if (!self.stopped) self.schedule(0);
    });
    source.onerror = function () {
      if (self.source !== source || self.stopped) return;
      const closed = source.readyState === 2; // EventSource.CLOSED: it will not reconnect
      if (self.streamOpened && !closed) {
        self.streamOpened = false; // the server ended the stream: EventSource resumes it
        return;
      }
      self.streamFailures += 1;
      self.closeStream();
      const err = trackingError('network', 'the status stream of ' + self.url + ' failed', 0, null);
      if (self.opts.transport === 'auto' && self.streamFailures >= 2) {
        self.streaming = false; // poll from now on, with the usual backoff
        self.schedule(self.opts.interval);
        return;
      }
      self.failed(err);
    };
  };

  Tracker.prototype.closeStream = function () {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  };

  /**
   * `messages` holds the newest messages (those with index >= since, if the server
   * honoured it); `message_count` counts every message ever added, so the first one
   * here has index message_count - messages.length. Report each index once.
   */
  Tracker.prototype.deliverMessages = function (state) {
    const messages = Array.isArray(state.messages) ? state.messages : [];
    const total = typeof state.message_count === 'number' ? state.message_count : messages.length;
    const first = total - messages.length;
    if (first > this.cursor) {
      this.reportGap(first - this.cursor, this.cursor);
      this.cursor = first;
    }
    for (let index = Math.max(this.cursor, first); index < total; index++) {
      if (this.stopped) return;
      call(this.opts.onMessage, String(messages[index - first]), index);
      this.cursor = index + 1;
    }
  };

  Tracker.prototype.reportGap = function (count, firstIndex) {
    if (typeof this.opts.onGap === 'function') {
      call(this.opts.onGap, count, firstIndex);
    } else {
      const noun = count === 1 ? 'message was' : 'messages were';
      call(this.opts.onMessage, '[' + count + ' earlier ' + noun + ' dropped by the server]', null);
    }
  };

  /** A failure worth retrying (network, timeout, 5xx): back off, or give up at the limit. */
  Tracker.prototype.failed = function (err) {
    this.failures += 1;
    if (this.failures > this.opts.maxRetries) {
      err.lastKind = err.kind;
      err.kind = 'gave_up';
      err.message = 'gave up after ' + this.failures + ' failed polls; last: ' + err.message;
      return this.fail(err);
    }
    const ceiling = Math.min(this.opts.maxBackoff, this.opts.interval * Math.pow(2, this.failures));
    // "Equal jitter": half the ceiling for sure, the rest at random, so clients spread out.
    this.schedule(ceiling / 2 + Math.random() * (ceiling / 2));
  };

  /** A final failure: stop and report it once. */
  Tracker.prototype.fail = function (err) {
    this.stop();
    call(this.opts.onError, err);
  };

  Tracker.prototype.schedule = function (delay) {
    if (this.stopped) return;
    const self = this;
    this.timer = setTimeout(function () {
      self.poll();
    }, delay);
  };

  async function readJson(response) {
    try {
      return await response.json();
    } catch (err) {
      return null;
    }
  }

  function trackingError(kind, message, status, body) {
    const err = new Error(message);
    err.kind = kind; // 'network', 'timeout', 'http', 'not_found', 'bad_response' or 'gave_up'
    err.status = status; // HTTP status, 0 when there was no answer
    err.body = body; // the JSON error body, when there was one
    return err;
  }

  /** Call a user callback; an exception in it is reported but does not stop polling. */
  function call(callback) {
    if (typeof callback !== 'function') return;
    try {
      callback.apply(null, Array.prototype.slice.call(arguments, 1));
    } catch (err) {
      setTimeout(function () {
        throw err;
      }, 0);
    }
  }

  /**
   * The status URL of progress `name` (default prefix '/_progress_status') that
   * browsers request unchanged: a name with a '.' or '..' segment goes as one
   * path segment ('/' as %2F), a name that is exactly '.' or '..' as ?name=,
   * any other name with its slashes kept. tracked.status_url does the same.
   */
  function statusUrl(name, options) {
    if (typeof name !== 'string' || !name) {
      throw new TypeError('statusUrl(name, options): name must be a non-empty string');
    }
    const prefix = String((options && options.prefix) || '/_progress_status').replace(/\/+$/, '');
    if (name === '.' || name === '..') {
      return prefix + '/?name=' + encodeURIComponent(name);
    }
    const segments = name.split('/');
    if (name.charAt(0) === '/' || segments.indexOf('.') !== -1 || segments.indexOf('..') !== -1) {
      return prefix + '/' + encodeURIComponent(name);
    }
    return prefix + '/' + segments.map(encodeURIComponent).join('/');
  }

  /**
   * The state of `state` (a wire object) as people read it, as `tracked show` says
   * it: 'running, stopping…' once a stop was asked and the owner saw it, 'queued
   * (2nd in line)' while it waits, 'finished (a stop was asked but the task did
   * not stop)' when it ran on to its own end; else the state word.
   */
  function stateText(state) {
    const word = String(state.state);
    if (state.in_progress && state.cancel_requested) return word + ', stopping…';
    if (word === 'queued' && typeof state.position === 'number') {
      return 'queued (' + ordinal(state.position) + ' in line)';
    }
    if ((word === 'finished' || word === 'failed') && state.cancel_requested) {
      return word + ' (a stop was asked but the task did not stop)';
    }
    return word;
  }

  function ordinal(n) {
    const teen = n % 100 >= 10 && n % 100 <= 20;
    const suffix = teen ? 'th' : ({1: 'st', 2: 'nd', 3: 'rd'})[n % 10] || 'th';
    return n + suffix;
  }

  /** A random progress_id (a UUID), unguessable where the browser has crypto. */
  function newProgressId() {
    const c = typeof crypto !== 'undefined' ? crypto : null;
    if (c && typeof c.randomUUID === 'function') {
      return c.randomUUID();
    }
    const bytes = new Uint8Array(16);
    if (c && typeof c.getRandomValues === 'function') {
      c.getRandomValues(bytes);
    } else {
      // No crypto at all (very old engines): unique enough for a demo, not secret.
      for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.prototype.map.call(bytes, function (b) {
      return (b + 0x100).toString(16).slice(1);
    }).join('');
    return [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20), hex.slice(20)].join('-');
  }

  // --------------------------------------------------------------------------- <tracked-progress>

  const ELEMENT_CSS = [
    ':host{display:block;color-scheme:light dark;font:inherit;',
    '--tracked-progress-height:.75rem;--tracked-progress-radius:.375rem;',
    '--tracked-progress-track:#d0d7de;--tracked-progress-indicator:#0969da;',
    '--tracked-progress-finished:#1a7f37;--tracked-progress-failed:#cf222e;',
    '--tracked-progress-cancelled:#6e7781;--tracked-progress-background:#ffffff;',
    '--tracked-progress-color:#1f2328;--tracked-progress-muted:#57606a;',
    '--tracked-progress-transition:width .3s ease;',
    'background:var(--tracked-progress-background);color:var(--tracked-progress-color)}',
    '@media (prefers-color-scheme:dark){:host{--tracked-progress-track:#30363d;',
    '--tracked-progress-indicator:#4493f8;--tracked-progress-finished:#3fb950;',
    '--tracked-progress-failed:#f85149;--tracked-progress-cancelled:#8b949e;',
    '--tracked-progress-background:#0d1117;--tracked-progress-color:#e6edf3;',
    '--tracked-progress-muted:#9198a1}}',
    ':host([hidden]){display:none}',
    '[part~=base]{padding:.5rem .75rem}',
    '[part~=header]{display:flex;flex-wrap:wrap;gap:.25rem .75rem;align-items:baseline;margin-bottom:.375rem}',
    '[part~=label]{font-weight:600}',
    '[part~=state]{color:var(--tracked-progress-muted)}',
    '[part~=track]{position:relative;overflow:hidden;height:var(--tracked-progress-height);',
    'border-radius:var(--tracked-progress-radius);background:var(--tracked-progress-track)}',
    '[part~=indicator]{height:100%;width:0;border-radius:inherit;',
    'background:var(--tracked-progress-indicator);transition:var(--tracked-progress-transition)}',
    ':host([state=finished]) [part~=indicator]{background:var(--tracked-progress-finished)}',
    ':host([state=failed]) [part~=indicator],:host([state=abandoned]) [part~=indicator]{background:var(--tracked-progress-failed)}',
    ':host([state=cancelled]) [part~=indicator]{background:var(--tracked-progress-cancelled)}',
    '.unknown [part~=indicator]{width:30%;animation:tracked-slide 1.5s ease-in-out infinite}',
    '@keyframes tracked-slide{from{transform:translateX(-100%)}to{transform:translateX(340%)}}',
    '@media (prefers-reduced-motion:reduce){[part~=indicator]{transition:none}',
    '.unknown [part~=indicator]{animation:none;width:100%;opacity:.35}}',
    '@media (forced-colors:active){[part~=track]{border:1px solid CanvasText}',
    '[part~=indicator]{background:Highlight}}',
    '[part~=details]{display:flex;flex-wrap:wrap;gap:.25rem .75rem;margin-top:.375rem;',
    'font-variant-numeric:tabular-nums;color:var(--tracked-progress-muted)}',
    '[part~=details] span:empty,[part~=status]:empty{display:none}',
    '[part~=status]{margin:.375rem 0 0}',
    '[part~=children]{display:flex;flex-wrap:wrap;gap:.25rem .75rem;margin:.375rem 0 0;padding:0;list-style:none}',
    '[part~=messages]{margin:.375rem 0 0;padding-left:1.25rem}',
    '[part~=messages]:empty{display:none}',
    '[part~=result]{margin:.375rem 0 0;white-space:pre-wrap;overflow-wrap:anywhere;font-family:ui-monospace,monospace}',
    '[part~=error]{margin:.375rem 0 0;color:var(--tracked-progress-failed);overflow-wrap:anywhere}',
    '[part~=stop]{margin-top:.5rem;font:inherit;color:inherit;background:transparent;',
    'border:1px solid currentColor;border-radius:.375rem;padding:.125rem .75rem;cursor:pointer}',
    '[part~=stop]:disabled{cursor:default;opacity:.75}',
    '[hidden]{display:none!important}',
  ].join('');

  const CHILD_STATES = ['queued', 'running', 'finished', 'failed', 'cancelled', 'abandoned'];

  /** The language of `element`'s text: its nearest lang attribute, else the browser's. */
  function languageOf(element) {
    const owner = element.closest && element.closest('[lang]');
    const lang = (owner && owner.getAttribute('lang')) || (typeof navigator !== 'undefined' && navigator.language) || 'en';
    try {
      return Intl.getCanonicalLocales(lang)[0] || 'en';
    } catch (err) {
      return 'en';
    }
  }

  /** `seconds` as a short duration in `lang`: "6 sec", "2 min", "1 hr" (Intl units). */
  function durationText(seconds, lang) {
    const s = Math.max(0, seconds);
    const pick = s < 90 ? ['second', Math.round(s)] : s < 5400 ? ['minute', Math.round(s / 60)] : ['hour', Math.round(s / 360) / 10];
    try {
      return new Intl.NumberFormat(lang, {style: 'unit', unit: pick[0], unitDisplay: 'short'}).format(pick[1]);
    } catch (err) {
      return pick[1] + ' ' + pick[0].charAt(0);
    }
  }

  function percentText(percent, lang) {
    try {
      return new Intl.NumberFormat(lang, {style: 'percent', maximumFractionDigits: 0}).format(percent / 100);
    } catch (err) {
      return Math.floor(percent) + '%';
    }
  }

  function numberText(n, lang) {
    try {
      return new Intl.NumberFormat(lang).format(n);
    } catch (err) {
      return String(n);
    }
  }

  /**
   * The bar in words, for `aria-valuetext`: "42% — about 6 sec left", "12 done",
   * "queued (2nd in line)".
   */
  function valueText(state, lang) {
    if (state.state === 'queued') return stateText(state);
    if (typeof state.percent !== 'number') {
      if (state.in_progress && !state.count) return stateText(state);
      return numberText(state.count || 0, lang) + ' done';
    }
    let text = percentText(state.percent, lang);
    if (state.in_progress && typeof state.eta === 'number') {
      text += ' — about ' + durationText(state.eta, lang) + ' left';
    }
    return text;
  }

  function resultText(result) {
    if (typeof result === 'string') return result;
    try {
      return JSON.stringify(result, null, 2);
    } catch (err) {
      return String(result);
    }
  }

  function make(tag, part, parent) {
    const node = document.createElement(tag);
    if (part) node.setAttribute('part', part);
    if (parent) parent.appendChild(node);
    return node;
  }

  /**
   * `<tracked-progress src="STATUS_URL">`: a progress bar following a status URL with
   * `trackProgress`. Attributes: `src`, `progress-id`, `label` (the bar's name; the
   * run's name by default), `transport` ('auto', 'sse', 'poll'), `interval` and
   * `start-timeout` (ms, as the options of trackProgress),
   * `messages` (how many of the newest messages to show, default 3; 0 hides them),
   * `cancel` (show a Stop button sending DELETE). It sets `state` to the run's state
   * and dispatches `tracked-update` (every state) and `tracked-end` (the final one),
   * with the wire JSON as `detail`, and `tracked-error` when it gives up.
   * Everything from the server is set as text, never as HTML.
   */
  function defineElement() {
    if (typeof customElements === 'undefined' || typeof HTMLElement === 'undefined') return;
    if (customElements.get('tracked-progress')) return;

    class TrackedProgress extends HTMLElement {
      static get observedAttributes() {
        return ['src', 'progress-id', 'transport', 'interval', 'start-timeout', 'messages', 'cancel', 'label'];
      }

      constructor() {
        super();
        this.watcher = null;
        this.latest = null;
        this.asked = false;
        this.restartTimer = null;
        const shadow = this.attachShadow({mode: 'open'});
        const style = make('style', null, shadow);
        style.textContent = ELEMENT_CSS;
        const base = make('div', 'base', shadow);
        const header = make('div', 'header', base);
        this.labelNode = make('span', 'label', header);
        this.stateNode = make('span', 'state', header);
        this.track = make('div', 'track', base);
        this.track.setAttribute('role', 'progressbar');
        this.track.setAttribute('aria-valuemin', '0');
        this.track.setAttribute('aria-valuemax', '100');
        this.indicator = make('div', 'indicator', this.track);
        const details = make('div', 'details', base);
        this.percentNode = make('span', 'percent', details);
        this.countNode = make('span', 'count', details);
        this.etaNode = make('span', 'eta', details);
        this.statusNode = make('p', 'status', base);
        this.childrenNode = make('ul', 'children', base);
        this.childrenNode.hidden = true;
        this.childrenNode.setAttribute('aria-label', 'Runs by state');
        this.messagesNode = make('ul', 'messages', base);
        this.messagesNode.setAttribute('aria-live', 'polite');
        this.messagesNode.setAttribute('aria-label', 'Latest messages');
        this.resultNode = make('pre', 'result', base);
        this.resultNode.hidden = true;
        this.errorNode = make('p', 'error', base);
        this.errorNode.setAttribute('role', 'alert');
        this.errorNode.hidden = true;
        this.stopButton = make('button', 'stop', base);
        this.stopButton.type = 'button';
        this.stopButton.textContent = 'Stop';
        this.stopButton.hidden = true;
        const self = this;
        this.stopButton.addEventListener('click', function () {
          self.stop();
        });
        this.showLabel(null);
      }

      connectedCallback() {
        if (!this.watcher) this.start();
      }

      disconnectedCallback() {
        this.halt();
      }

      attributeChangedCallback(name, old, value) {
        if (old === value) return;
        if (name === 'messages') {
          this.trimMessages();
        } else if (name === 'cancel') {
          this.showStop(this.latest);
        } else if (name === 'label') {
          this.showLabel(this.latest);
        } else if (this.isConnected) {
          // src, progress-id, transport, interval: follow anew, once per task
          const self = this;
          if (this.restartTimer === null) {
            this.restartTimer = setTimeout(function () {
              self.restartTimer = null;
              self.start();
            }, 0);
          }
        }
      }

      /** The wire JSON last received, or null. */
      get state() {
        return this.latest;
      }

      /** Follow `src` from the start (again). */
      start() {
        this.halt();
        const src = this.getAttribute('src');
        if (!src || !this.isConnected) return;
        this.latest = null;
        this.asked = false;
        this.messagesNode.textContent = '';
        this.errorNode.hidden = true;
        this.resultNode.hidden = true;
        this.showState({state: 'waiting', in_progress: true, count: 0, percent: null, messages: []}, true);
        const self = this;
        const interval = parseInt(this.getAttribute('interval') || '', 10);
        const options = {
          transport: this.getAttribute('transport') || 'auto',
          progressId: this.getAttribute('progress-id') || null,
          onMessage: function (text) {
            self.addMessage(text);
          },
          onProgress: function (state) {
            self.latest = state;
            self.showState(state, false);
            self.emit('tracked-update', state);
          },
          onDone: function (state) {
            self.emit('tracked-end', state);
          },
          onError: function (err) {
            self.showError(err);
            self.emit('tracked-error', err);
          },
        };
        if (interval > 0) options.interval = interval;
        const startTimeout = parseInt(this.getAttribute('start-timeout') || '', 10);
        if (startTimeout > 0) options.startTimeout = startTimeout;
        try {
          this.watcher = trackProgress(src, options);
        } catch (err) {
          this.showError(err);
        }
      }

      halt() {
        if (this.watcher) {
          this.watcher.stop();
          this.watcher = null;
        }
      }

      /** Ask the run to stop (DELETE on its status URL); the final state follows. */
      stop() {
        if (!this.watcher) return Promise.resolve(null);
        const self = this;
        this.asked = true;
        this.stopButton.disabled = true;
        return this.watcher.cancel().then(function (answer) {
          if (answer.httpStatus !== 202) {
            self.asked = false;
            self.stopButton.disabled = false;
            self.showError(new Error(String(answer.error || 'the run could not be stopped')));
          }
          return answer;
        }, function (err) {
          self.asked = false;
          self.stopButton.disabled = false;
          self.showError(err);
          return null;
        });
      }

      emit(type, detail) {
        this.dispatchEvent(new CustomEvent(type, {detail: detail, bubbles: true, composed: true}));
      }

      showLabel(state) {
        const own = this.getAttribute('label');
        let text = own;
        if (!text) {
          text = state && (state.name || state.progress_id) ? String(state.name || state.progress_id) : 'Progress';
        }
        this.labelNode.textContent = text;
        this.track.setAttribute('aria-label', text);
      }

      showState(state, placeholder) {
        const lang = languageOf(this);
        const word = String(state.state);
        if (!placeholder) this.setAttribute('state', word);
        this.showLabel(placeholder ? null : state);
        this.stateNode.textContent = placeholder ? 'waiting…' : stateText(state);
        const known = typeof state.percent === 'number' && isFinite(state.percent);
        const track = this.track;
        track.classList.toggle('unknown', !known && state.in_progress === true && word === 'running');
        if (known) {
          const percent = Math.max(0, Math.min(100, state.percent));
          track.setAttribute('aria-valuenow', String(Math.floor(percent)));
          this.indicator.style.width = percent + '%';
          this.percentNode.textContent = word === 'queued' ? '' : percentText(percent, lang);
        } else {
          track.removeAttribute('aria-valuenow');
          this.indicator.style.width = state.in_progress === false && word === 'finished' ? '100%' : '';
          this.percentNode.textContent = '';
        }
        track.setAttribute('aria-valuetext', placeholder ? 'waiting' : valueText(state, lang));
        if (typeof state.total === 'number') {
          this.countNode.textContent = numberText(state.count, lang) + ' / ' + numberText(state.total, lang);
        } else {
          this.countNode.textContent = state.count ? numberText(state.count, lang) : '';
        }
        this.etaNode.textContent = state.in_progress && typeof state.eta === 'number'
          ? 'about ' + durationText(state.eta, lang) + ' left' : '';
        this.statusNode.textContent = this.statusSaysMore(state) ? String(state.status) : '';
        this.showChildren(state.children, lang);
        if (state.in_progress === false) {
          if (typeof state.error === 'string' && state.error) {
            this.errorNode.textContent = state.error;
            this.errorNode.hidden = false;
          }
          if (word === 'finished' && state.result !== null && state.result !== undefined) {
            this.resultNode.textContent = resultText(state.result);
            this.resultNode.hidden = false;
          }
        }
        this.showStop(placeholder ? null : state);
      }

      /** Whether the status text says more than the state word and the name shown. */
      statusSaysMore(state) {
        const status = state.status;
        if (!status) return false;
        const same = [state.state, 'in progress', 'queued', state.name, this.getAttribute('label')];
        return same.indexOf(status) === -1;
      }

      showChildren(children, lang) {
        const node = this.childrenNode;
        if (!children || typeof children !== 'object') {
          node.hidden = true;
          node.textContent = '';
          return;
        }
        node.textContent = '';
        const total = typeof children.total === 'number' ? children.total : null;
        if (total !== null) {
          make('li', 'child-count', node).textContent = numberText(total, lang) + ' runs';
        }
        for (const word of CHILD_STATES) {
          const n = children[word];
          if (typeof n === 'number' && n > 0) {
            const item = make('li', 'child-count', node);
            item.textContent = numberText(n, lang) + ' ' + word;
            item.dataset.state = word;
          }
        }
        node.hidden = false;
      }

      showStop(state) {
        const wanted = this.hasAttribute('cancel') && state !== null && state.in_progress === true;
        this.stopButton.hidden = !wanted;
        if (!wanted) return;
        const stopping = state.cancel_requested === true;
        this.stopButton.textContent = stopping ? 'Stopping…' : 'Stop';
        this.stopButton.disabled = stopping || this.asked;
      }

      addMessage(text) {
        const keep = this.messageLimit();
        if (keep === 0) return;
        make('li', 'message', this.messagesNode).textContent = text;
        this.trimMessages();
      }

      messageLimit() {
        const value = parseInt(this.getAttribute('messages') || '', 10);
        return isNaN(value) || value < 0 ? 3 : value;
      }

      trimMessages() {
        const keep = this.messageLimit();
        const list = this.messagesNode;
        while (list.childElementCount > keep) list.removeChild(list.firstElementChild);
      }

      showError(err) {
        this.errorNode.textContent = String(err && err.message ? err.message : err);
        this.errorNode.hidden = false;
        if (!this.latest) this.setAttribute('state', 'error');
      }
    }

    customElements.define('tracked-progress', TrackedProgress);
  }

  defineElement();

  return {
    trackProgress: trackProgress,
    statusUrl: statusUrl,
    stateText: stateText,
    newProgressId: newProgressId,
    valueText: valueText,
    defaults: DEFAULTS,
  };
});
