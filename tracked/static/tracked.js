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

  return {
    trackProgress: trackProgress,
    statusUrl: statusUrl,
    stateText: stateText,
    newProgressId: newProgressId,
    defaults: DEFAULTS,
  };
});
