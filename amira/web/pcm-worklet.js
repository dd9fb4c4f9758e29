// AudioWorklet: the microphone, mixed to mono and resampled to 16 kHz s16le, posted to the page in
// 100 ms pieces (ArrayBuffers) that go out as WebSocket binary frames unchanged.
//
// The audio context runs at the device's rate (usually 44.1 or 48 kHz); a windowed-sinc low-pass
// interpolator brings it to 16 kHz without the aliasing that plain decimation adds, which the
// model hears as noise. Messages from the page: "flush" posts what is left, then "flushed", and
// the processor stops.

const TARGET_RATE = 16000;
const FRAME_SAMPLES = 1600; // 100 ms at 16 kHz
const ZERO_CROSSINGS = 8; // kernel half-width, in zero crossings of the low-pass sinc
const TABLE_STEPS = 256; // kernel table entries per input sample

class Pcm16Resampler extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / TARGET_RATE; // input samples per output sample
    this.passthrough = sampleRate === TARGET_RATE;
    // Cut a little below the output's Nyquist frequency; never above the input's.
    this.cutoff = Math.min(1, 1 / this.ratio) * 0.9;
    this.halfWidth = ZERO_CROSSINGS / this.cutoff;
    this.table = this.kernelTable();
    this.input = new Float32Array(16384);
    this.length = 0; // samples held in this.input
    this.inputStart = 0; // absolute index of this.input[0]
    this.outputIndex = 0; // absolute index of the next output sample
    this.frame = new DataView(new ArrayBuffer(FRAME_SAMPLES * 2));
    this.frameFill = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.postFrame();
        this.port.postMessage("flushed");
        this.running = false;
      }
    };
  }

  kernelTable() {
    const size = Math.ceil(this.halfWidth * TABLE_STEPS) + 2;
    const table = new Float32Array(size);
    for (let i = 0; i < size; i++) {
      const x = i / TABLE_STEPS;
      const u = this.cutoff * x;
      const sinc = u === 0 ? 1 : Math.sin(Math.PI * u) / (Math.PI * u);
      const window = x >= this.halfWidth ? 0 : 0.5 * (1 + Math.cos((Math.PI * x) / this.halfWidth));
      table[i] = this.cutoff * sinc * window;
    }
    return table;
  }

  kernel(x) {
    const position = Math.abs(x) * TABLE_STEPS;
    const index = Math.floor(position);
    if (index + 1 >= this.table.length) return 0;
    const fraction = position - index;
    return this.table[index] + (this.table[index + 1] - this.table[index]) * fraction;
  }

  push(sample) {
    if (this.length === this.input.length) {
      const grown = new Float32Array(this.input.length * 2);
      grown.set(this.input);
      this.input = grown;
    }
    this.input[this.length++] = sample;
  }

  emit(value) {
    const clamped = Math.max(-1, Math.min(1, value));
    this.frame.setInt16(this.frameFill * 2, clamped < 0 ? clamped * 32768 : clamped * 32767, true);
    this.frameFill += 1;
    if (this.frameFill === FRAME_SAMPLES) this.postFrame();
  }

  postFrame() {
    if (this.frameFill === 0) return;
    const bytes = this.frame.buffer.slice(0, this.frameFill * 2);
    this.port.postMessage(bytes, [bytes]);
    this.frameFill = 0;
  }

  resample() {
    if (this.passthrough) {
      for (let i = 0; i < this.length; i++) this.emit(this.input[i]);
      this.inputStart += this.length;
      this.length = 0;
      return;
    }
    for (;;) {
      const t = this.outputIndex * this.ratio - this.inputStart; // position in this.input
      const last = Math.floor(t + this.halfWidth);
      if (last >= this.length) break;
      const first = Math.max(0, Math.ceil(t - this.halfWidth));
      let sum = 0;
      for (let k = first; k <= last; k++) sum += this.input[k] * this.kernel(t - k);
      this.emit(sum);
      this.outputIndex += 1;
    }
    // Drop input that no future output sample reaches.
    const needed = Math.floor(this.outputIndex * this.ratio - this.inputStart - this.halfWidth) - 1;
    if (needed > 4096) {
      this.input.copyWithin(0, needed, this.length);
      this.length -= needed;
      this.inputStart += needed;
    }
  }

  process(inputs) {
    const channels = inputs[0];
    if (this.running && channels && channels.length > 0) {
      const frames = channels[0].length;
      for (let i = 0; i < frames; i++) {
        let sum = 0;
        for (let c = 0; c < channels.length; c++) sum += channels[c][i];
        this.push(sum / channels.length);
      }
      this.resample();
    }
    return this.running;
  }
}

registerProcessor("pcm16-resampler", Pcm16Resampler);
