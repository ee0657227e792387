/* The demo page: start a job with a fresh progress_id, then watch it with tracked.js.
 * Everything that comes from the server is written with textContent, never as HTML. */
(function () {
  'use strict';

  const JOBS = {
    background: {url: 'jobs/background', method: 'POST', status: '_progress_status/demo-job'},
    stream: {url: 'jobs/stream', method: 'GET', status: '_progress_status/demo-stream'},
  };
  const el = function (id) {
    return document.getElementById(id);
  };
  let watcher = null;
  let runs = 0;  // which start() the page is showing: a late answer of an older one is ignored

  function setText(id, text) {
    el(id).textContent = text;
  }

  function setBusy(busy) {
    el('start').disabled = busy;
    el('start-stream').disabled = busy;
    el('stop').disabled = !busy;
    el('cancel').disabled = !busy;
  }

  function reset(progressId) {
    el('messages').textContent = '';
    el('stream-output').textContent = '';
    el('bar').className = 'bar';
    showPercent(0);
    setText('eta', '–');
    setText('status', 'starting');
    setText('state', 'waiting');
    setText('progress-id', progressId);
    setText('result', '–');
  }

  function showPercent(percent) {
    const value = Math.max(0, Math.min(100, percent));
    el('bar-fill').style.width = value + '%';
    el('bar').setAttribute('aria-valuenow', String(Math.round(value)));
    setText('percent', Math.round(value) + '%');
  }

  function showState(state) {
    if (typeof state.percent === 'number') {
      showPercent(state.percent);
    } else {
      setText('percent', state.count + ' done (total unknown)');
    }
    setText('eta', formatEta(state));
    setText('status', String(state.status));
    setText('state', String(state.state));
  }

  function formatEta(state) {
    if (!state.in_progress) return 'done in ' + Number(state.elapsed).toFixed(1) + ' s';
    if (typeof state.eta !== 'number') return 'estimating…';
    return state.eta.toFixed(1) + ' s';
  }

  function addMessage(text, index) {
    const item = document.createElement('li');
    item.textContent = text;
    if (index === null) item.className = 'gap';
    el('messages').appendChild(item);
    item.scrollIntoView({block: 'nearest'});
  }

  function finished(state) {
    watcher = null;
    setBusy(false);
    el('bar').className = 'bar ended-' + String(state.state);
    if (state.error) setText('status', state.status + ': ' + state.error);
  }

  function failed(message) {
    if (watcher) watcher.stop();
    watcher = null;
    setBusy(false);
    setText('state', 'error');
    setText('status', message);
  }

  /** Start the job; a refusal is shown. The background job answers 202 at once, and
   * only then is it watched, at the status URL its Location header names, so the first
   * poll cannot come before the claim; the streaming job is watched while it streams. */
  async function runJob(job, progressId, run) {
    const started = fetch(job.url + '?progress_id=' + encodeURIComponent(progressId), {
      method: job.method,
    });
    if (job === JOBS.stream) watch(job.status, progressId, run);
    const response = await started;
    if (!response.ok) {
      const body = await response.json().catch(function () { return null; });
      failed('the job was refused: HTTP ' + response.status + (body && body.error ? ': ' + body.error : ''));
      return;
    }
    if (job === JOBS.stream) {
      if (response.body) await readStream(response.body);
      return;
    }
    const location = response.headers.get('Location');
    watch(location || job.status, location ? null : progressId, run);
  }

  async function readStream(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    const output = el('stream-output');
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) break;
      output.appendChild(document.createTextNode(decoder.decode(chunk.value, {stream: true})));
      output.scrollTop = output.scrollHeight;
    }
  }

  /** Poll ``url`` for the run numbered ``run``, unless another run (or Stop) came since. */
  function watch(url, progressId, run) {
    if (run !== runs) return;
    if (watcher) watcher.stop();
    const options = {
      onProgress: showState,
      onMessage: addMessage,
      onWaiting: function () { setText('status', 'waiting for the job to start'); },
      onSuccess: function (state) {
        setText('result', state.result === null ? 'none (the job returned nothing)' : JSON.stringify(state.result));
      },
      onCancel: function () { setText('result', 'stopped on request'); },
      onDone: finished,
      onError: function (err) { failed(err.message); },
    };
    if (progressId) options.progressId = progressId;
    watcher = tracked.trackProgress(url, options);
    showElement(url, progressId);
  }

  /** The same run in <tracked-progress>: it follows whatever its attributes name. */
  function showElement(url, progressId) {
    const element = el('element');
    if (progressId) {
      element.setAttribute('progress-id', progressId);
    } else {
      element.removeAttribute('progress-id');
    }
    element.setAttribute('src', url);
  }

  function start(kind) {
    const job = JOBS[kind];
    const progressId = tracked.newProgressId();
    if (watcher) watcher.stop();
    watcher = null;
    runs += 1;
    reset(progressId);
    setBusy(true);
    runJob(job, progressId, runs).catch(function (err) {
      failed('the job request failed: ' + err.message);
    });
  }

  el('start').addEventListener('click', function () { start('background'); });
  el('start-stream').addEventListener('click', function () { start('stream'); });
  el('cancel').addEventListener('click', function () {
    if (!watcher) return;
    el('cancel').disabled = true;
    setText('status', 'asking the job to stop');
    watcher.cancel().then(function (answer) {
      if (answer.httpStatus !== 202) setText('status', 'not stopped: ' + String(answer.error));
    }, function (err) {
      setText('status', 'the stop request failed: ' + err.message);
    });
  });
  el('stop').addEventListener('click', function () {
    if (watcher) watcher.stop();
    watcher = null;
    runs += 1;
    setBusy(false);
    setText('status', 'stopped watching (the job goes on)');
  });
})();
