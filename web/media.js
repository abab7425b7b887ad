// Local devices, audio levels and connection quality.

// The camera is sent in three simulcast layers (peers.js) and each viewer gets the one its
// tile and its network need: 960×540 at the top, which is what browsers need to send three
// layers at all (fewer at lower resolutions).
const CAMERA = { width: { ideal: 960 }, height: { ideal: 540 }, frameRate: { ideal: 24, max: 30 } };

/** Camera and microphone, falling back to whichever one works. Resolves to { stream, error }. */
export async function getLocalMedia({ audio = true, video = true, micId = '', cameraId = '' } = {}) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return { stream: null, error: new Error('this page has no access to media devices') };
  }
  const a = audio && (micId ? { deviceId: { ideal: micId } } : true);
  const v = video && { ...CAMERA, ...(cameraId ? { deviceId: { ideal: cameraId } } : {}) };
  const attempts = [];
  if (a && v) attempts.push({ audio: a, video: v });
  if (a) attempts.push({ audio: a });
  if (v) attempts.push({ video: v });
  let error = null;
  for (const constraints of attempts) {
    try {
      return { stream: await navigator.mediaDevices.getUserMedia(constraints), error: null };
    } catch (err) {
      error = err;
      // Permission refused: asking again for less will be refused too.
      if (err && err.name === 'NotAllowedError') break;
    }
  }
  return { stream: null, error: error || new Error('no media devices') };
}

/** One track of a kind from a specific device. */
export async function getTrack(kind, deviceId) {
  const constraints = kind === 'audio'
    ? { audio: deviceId ? { deviceId: { exact: deviceId } } : true }
    : { video: { ...CAMERA, ...(deviceId ? { deviceId: { exact: deviceId } } : {}) } };
  const stream = await navigator.mediaDevices.getUserMedia(constraints);
  return kind === 'audio' ? stream.getAudioTracks()[0] : stream.getVideoTracks()[0];
}

/** Devices by kind: { audioinput: [], videoinput: [], audiooutput: [] }. */
export async function listDevices() {
  const out = { audioinput: [], videoinput: [], audiooutput: [] };
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return out;
  try {
    for (const d of await navigator.mediaDevices.enumerateDevices()) {
      if (out[d.kind] && d.deviceId) out[d.kind].push(d);
    }
  } catch {
    // no devices to offer
  }
  return out;
}

export const canPickSpeaker = typeof HTMLMediaElement !== 'undefined' && 'setSinkId' in HTMLMediaElement.prototype;

/**
 * Audio levels measured in the page: an AnalyserNode per track, peak-held so a short syllable
 * (or the fake device's 20 ms beep) keeps counting for a moment.
 */
export class LevelMeter {
  constructor() {
    this.ctx = null;
    this.nodes = new Map();
  }

  context() {
    if (!this.ctx) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) return null;
      this.ctx = new Ctx();
    }
    return this.ctx;
  }

  get running() {
    return Boolean(this.ctx && this.ctx.state === 'running');
  }

  resume() {
    if (this.ctx && this.ctx.state !== 'running') return this.ctx.resume().catch(() => {});
    return Promise.resolve();
  }

  set(key, track) {
    const current = this.nodes.get(key);
    if (current && current.track === track) return;
    this.remove(key);
    if (!track) return;
    const ctx = this.context();
    if (!ctx) return;
    try {
      const source = ctx.createMediaStreamSource(new MediaStream([track]));
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 2048;
      source.connect(analyser);
      this.nodes.set(key, { track, source, analyser, buf: new Float32Array(analyser.fftSize), level: 0 });
    } catch {
      // a track the context cannot read: no level for it
    }
  }

  remove(key) {
    const node = this.nodes.get(key);
    if (!node) return;
    try { node.source.disconnect(); } catch { /* already gone */ }
    this.nodes.delete(key);
  }

  /** Samples every analyser; returns Map(key -> level 0..1), decaying between peaks. */
  sample() {
    const levels = new Map();
    for (const [key, node] of this.nodes) {
      node.analyser.getFloatTimeDomainData(node.buf);
      let peak = 0;
      for (let i = 0; i < node.buf.length; i += 1) {
        const v = Math.abs(node.buf[i]);
        if (v > peak) peak = v;
      }
      node.level = Math.max(peak, node.level * 0.85);
      levels.set(key, node.level);
    }
    return levels;
  }

  clear() {
    for (const key of [...this.nodes.keys()]) this.remove(key);
  }
}

/** 'good' | 'fair' | 'poor' from loss (0..1) and round trip (seconds). */
export function qualityOf(loss, rtt) {
  if (loss > 0.1 || rtt > 0.5) return 'poor';
  if (loss > 0.03 || rtt > 0.25) return 'fair';
  return 'good';
}

/**
 * Reads a receiving PC's stats. Returns { rtt, byMid: Map(mid -> {kind, packetsReceived,
 * packetsLost, framesDecoded, energy, duration}) }.
 */
export async function readInbound(pc) {
  const report = await pc.getStats();
  const byMid = new Map();
  let rtt = null;
  let selectedPair = null;
  report.forEach((r) => {
    if (r.type === 'transport' && r.selectedCandidatePairId) selectedPair = r.selectedCandidatePairId;
  });
  report.forEach((r) => {
    if (r.type === 'inbound-rtp' && r.mid != null) {
      byMid.set(String(r.mid), {
        kind: r.kind,
        packetsReceived: r.packetsReceived || 0,
        packetsLost: Math.max(0, r.packetsLost || 0),
        framesDecoded: r.framesDecoded || 0,
        energy: r.totalAudioEnergy || 0,
        duration: r.totalSamplesDuration || 0,
      });
    } else if (r.type === 'candidate-pair' && (r.id === selectedPair || (!selectedPair && r.nominated && r.state === 'succeeded'))) {
      if (typeof r.currentRoundTripTime === 'number') rtt = r.currentRoundTripTime;
    }
  });
  return { rtt, byMid };
}
