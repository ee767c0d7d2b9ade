// shoal's dashboard. One stream of the swarm's events (GET /events, with shoal's task events) keeps the page
// current: on each (re)connection the page reads nodes, services and tasks once, then patches them from the
// events (a task event carries the task; a service or node event makes the page read that one object again).
// Nothing polls. Actions send the requests the CLI sends, with the version just read, after a confirmation.
"use strict";

(() => {
  // The API's root: the page is served at <root>/ui/, by a manager or by `shoal dashboard`'s bridge.
  const BASE = location.pathname.replace(/ui\/[^/]*$/, "");
  const EVENT_TYPES = ["service", "node", "secret", "config", "network", "task"];
  const SESSION_KEY = "shoal-dashboard-session";
  const MAX_EVENTS = 50;
  const RETRY_FIRST = 500;
  const RETRY_MAX = 10000;
  const TERMINAL = new Set(["complete", "shutdown", "failed", "rejected", "remove", "orphaned"]);
  const FAILED = new Set(["failed", "rejected", "orphaned"]);
  const UNPLACED = new Set(["new", "pending", "allocated"]);
  const STOPPED_DESIRED = new Set(["shutdown", "remove"]);
  const UPDATING = new Set(["updating", "rollback_started"]);

  const state = { nodes: new Map(), services: new Map(), tasks: new Map(), events: [], taskEvents: [] };
  const reads = new Map(); // object ID -> number of its latest read, so an older answer never wins
  let session = null; // the bridge's session; none when a manager serves the page itself
  let retryDelay = RETRY_FIRST;
  let renderQueued = false;

  // ---- the API ------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function authHeaders() {
    return session ? { Authorization: "Bearer " + session } : {};
  }

  async function errorOf(response) {
    const text = await response.text();
    try {
      const data = JSON.parse(text);
      if (data && typeof data.message === "string") return new ApiError(response.status, data.message);
    } catch (_) { /* not JSON: the status says it */ }
    return new ApiError(response.status, `${response.status} ${response.statusText}`.trim());
  }

  async function api(method, path, body) {
    const init = { method, headers: authHeaders(), cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(BASE + path, init);
    if (!response.ok) throw await errorOf(response);
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  }

  function query(filters) {
    return encodeURIComponent(JSON.stringify(filters));
  }

  async function startSession() {
    const match = /[#&]token=([^&]+)/.exec(location.hash);
    if (match) {
      // The link works once; keep it out of the address bar and the history.
      history.replaceState(null, "", location.pathname + location.search);
      try {
        const answer = await api("POST", "dashboard/session", { token: decodeURIComponent(match[1]) });
        session = answer.session;
        sessionStorage.setItem(SESSION_KEY, session);
        return;
      } catch (error) {
        if (!sessionStorage.getItem(SESSION_KEY)) throw error;
      }
    }
    session = sessionStorage.getItem(SESSION_KEY);
  }

  // ---- the state, from documents and from events --------------------------------------------------------

  function taskFromDoc(doc) {
    const status = doc.Status || {};
    return {
      id: doc.ID, serviceId: doc.ServiceID || "", serviceName: (doc.ServiceAnnotations || {}).Name || "",
      slot: doc.Slot || 0, nodeId: doc.NodeID || "", state: status.State || "", desired: doc.DesiredState || "",
      err: status.Err || "", image: ((doc.Spec || {}).ContainerSpec || {}).Image || "",
    };
  }

  function taskFromEvent(id, attributes) {
    return {
      id, serviceId: attributes["service.id"] || "", serviceName: attributes["service.name"] || "",
      slot: Number(attributes.slot || 0), nodeId: attributes["node.id"] || "", state: attributes.state || "",
      desired: attributes.desiredstate || "", err: attributes.err || "", image: attributes.image || "",
    };
  }

  async function reload() {
    const [nodes, services, tasks] = await Promise.all([
      api("GET", "nodes"), api("GET", "services?status=true"), api("GET", "tasks"),
    ]);
    state.nodes = new Map(nodes.map((node) => [node.ID, node]));
    state.services = new Map(services.map((service) => [service.ID, service]));
    state.tasks = new Map(tasks.map((task) => [task.ID, taskFromDoc(task)]));
  }

  function nextRead(id) {
    const number = (reads.get(id) || 0) + 1;
    reads.set(id, number);
    return number;
  }

  async function readService(id) {
    const mine = nextRead(id);
    try {
      const found = await api("GET", `services?status=true&filters=${query({ id: [id] })}`);
      if (reads.get(id) !== mine) return;
      const service = found.find((candidate) => candidate.ID === id);
      if (service) state.services.set(id, service);
      else state.services.delete(id);
      queueRender();
    } catch (error) {
      notice(`could not read service ${id}: ${error.message}`);
    }
  }

  async function readNode(id) {
    const mine = nextRead(id);
    try {
      const node = await api("GET", `nodes/${encodeURIComponent(id)}`);
      if (reads.get(id) !== mine) return;
      state.nodes.set(id, node);
    } catch (error) {
      if (reads.get(id) !== mine) return;
      if (error.status === 404) state.nodes.delete(id);
      else notice(`could not read node ${id}: ${error.message}`);
    }
    queueRender();
  }

  async function readGlobalServices() {
    // How many tasks a global service wants follows the nodes: read those services again.
    const globals = [...state.services.values()].filter((service) => modeOf(service) === "global");
    await Promise.all(globals.map((service) => readService(service.ID)));
  }

  function apply(event) {
    const actor = event.Actor || {};
    const attributes = actor.Attributes || {};
    const id = actor.ID || "";
    const removed = event.Action === "remove";
    if (event.Type === "task") {
      if (removed) state.tasks.delete(id);
      else state.tasks.set(id, taskFromEvent(id, attributes));
    } else if (event.Type === "service") {
      if (removed) {
        nextRead(id);
        state.services.delete(id);
      } else readService(id);
    } else if (event.Type === "node") {
      if (removed) {
        nextRead(id);
        state.nodes.delete(id);
      } else readNode(id);
      readGlobalServices();
    }
    const kept = event.Type === "task" ? state.taskEvents : state.events;
    kept.unshift(event);
    kept.length = Math.min(kept.length, MAX_EVENTS);
  }

  // ---- the stream ---------------------------------------------------------------------------------------

  function setConnection(status, text) {
    const badge = document.getElementById("connection");
    badge.dataset.state = status;
    badge.textContent = text || status;
  }

  async function follow() {
    setConnection("connecting", "connecting…");
    let response;
    try {
      response = await fetch(`${BASE}events?filters=${query({ type: EVENT_TYPES })}`,
        { headers: authHeaders(), cache: "no-store", credentials: "omit" });
      if (!response.ok) throw await errorOf(response);
    } catch (error) {
      retry(error);
      return;
    }
    const reader = response.body.getReader();
    let over = false;
    const fail = (error) => {
      if (over) return;
      over = true;
      reader.cancel().catch(() => {});
      retry(error);
    };
    // Subscribed first, then read: whatever changes meanwhile arrives as events, applied after the read.
    let waiting = [];
    reload().then(() => {
      for (const event of waiting) apply(event);
      waiting = null;
      retryDelay = RETRY_FIRST;
      setConnection("live", "live");
      queueRender();
    }, fail);
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, end).trim();
          buffer = buffer.slice(end + 1);
          if (!line) continue;
          let event;
          try {
            event = JSON.parse(line);
          } catch (_) {
            continue;
          }
          if (waiting) waiting.push(event);
          else {
            apply(event);
            queueRender();
          }
        }
      }
      fail(new Error("the event stream ended"));
    } catch (error) {
      fail(error);
    }
  }

  function retry(error) {
    if (error instanceof ApiError && error.status === 401) {
      setConnection("error", "session ended");
      notice(`${error.message}`);
      return; // a new link is needed: retrying cannot help
    }
    setConnection("reconnecting", "reconnecting…");
    if (error && error.message) console.warn("dashboard: event stream:", error.message);
    window.setTimeout(follow, retryDelay);
    retryDelay = Math.min(retryDelay * 2, RETRY_MAX);
  }

  // ---- actions ------------------------------------------------------------------------------------------

  function notice(text) {
    document.getElementById("notice-text").textContent = text;
    document.getElementById("notice").hidden = false;
  }

  async function act(question, action) {
    if (!window.confirm(question)) return false;
    try {
      await action();
      return true;
    } catch (error) {
      notice(error.message);
      return false;
    }
  }

  async function updateService(id, change, params) {
    const current = await api("GET", `services/${encodeURIComponent(id)}`);
    change(current.Spec);
    const extra = params ? `&${params}` : "";
    await api("POST", `services/${encodeURIComponent(id)}/update?version=${current.Version.Index}${extra}`,
      current.Spec);
  }

  function scale(service, value) {
    const name = service.Spec.Name;
    if (!/^\d+$/.test(value)) {
      notice(`${name}: invalid replicas value ${value || "(empty)"}: must be a non-negative integer`);
      return Promise.resolve(false);
    }
    const replicas = Number(value);
    return act(`Scale service ${name} to ${replicas} replicas?`, () => updateService(service.ID, (spec) => {
      const mode = spec.Mode || {};
      if (mode.Replicated) mode.Replicated.Replicas = replicas;
      else if (mode.ReplicatedJob) mode.ReplicatedJob.TotalCompletions = replicas;
      else throw new Error(`${name}: scale can only be used with replicated or replicated-job mode`);
    }));
  }

  function updateImage(service, value) {
    const name = service.Spec.Name;
    const image = value.trim();
    if (!image) {
      notice(`${name}: give an image`);
      return Promise.resolve(false);
    }
    return act(`Update service ${name} to image ${image}?`, () => updateService(service.ID, (spec) => {
      spec.TaskTemplate = spec.TaskTemplate || {};
      spec.TaskTemplate.ContainerSpec = spec.TaskTemplate.ContainerSpec || {};
      spec.TaskTemplate.ContainerSpec.Image = image;
    }));
  }

  function rollback(service) {
    const name = service.Spec.Name;
    return act(`Roll service ${name} back to its previous specification?`,
      () => updateService(service.ID, () => {}, "rollback=previous"));
  }

  function setAvailability(node, availability) {
    const name = nodeName(node);
    const verb = availability === "drain" ? "Drain" : "Activate";
    const consequence = availability === "drain" ? " Its tasks move to other nodes." : "";
    return act(`${verb} node ${name}?${consequence}`, async () => {
      const current = await api("GET", `nodes/${encodeURIComponent(node.ID)}`);
      current.Spec.Availability = availability;
      await api("POST", `nodes/${encodeURIComponent(node.ID)}/update?version=${current.Version.Index}`, current.Spec);
    });
  }

  // ---- reading the documents ----------------------------------------------------------------------------

  function modeOf(service) {
    const mode = (service.Spec || {}).Mode || {};
    if (mode.Global) return "global";
    if (mode.ReplicatedJob) return "replicated job";
    if (mode.GlobalJob) return "global job";
    return "replicated";
  }

  function nodeName(node) {
    return (node.Spec || {}).Name || (node.Description || {}).Hostname || node.ID;
  }

  function nodeState(node) {
    return (node.Status || {}).State || "unknown";
  }

  function serviceName(task) {
    const service = state.services.get(task.serviceId);
    return (service && service.Spec.Name) || task.serviceName || task.serviceId.slice(0, 12);
  }

  function taskName(task) {
    return task.slot ? `${serviceName(task)}.${task.slot}` : serviceName(task);
  }

  function shown(task) {
    // Current tasks, and stopped ones until they have ended (history stays out of the view).
    return !(STOPPED_DESIRED.has(task.desired) && TERMINAL.has(task.state));
  }

  function cardClass(task) {
    if (task.state === "running") return "running";
    if (FAILED.has(task.state)) return "failed";
    if (TERMINAL.has(task.state)) return "ended";
    return "waiting";
  }

  function counts(service) {
    const image = ((service.Spec.TaskTemplate || {}).ContainerSpec || {}).Image || "";
    let running = 0;
    let current = 0;
    let completed = 0; // a job's tasks that ran to completion
    let wanted = 0; // a global service's tasks wanted running on nodes that are not down (its desired count)
    for (const task of state.tasks.values()) {
      if (task.serviceId !== service.ID) continue;
      if (task.state === "complete") completed += 1;
      const node = state.nodes.get(task.nodeId);
      if (task.desired === "running" && node && nodeState(node) !== "down") wanted += 1;
      if (task.state !== "running" || task.desired !== "running") continue;
      if (!node || nodeState(node) !== "ready") continue;
      running += 1;
      if (task.image === image) current += 1;
    }
    // Desired follows the tasks as they come (the service's status was read once, maybe before its tasks).
    const mode = service.Spec.Mode || {};
    const status = service.ServiceStatus || {};
    let desired;
    if (mode.Global) desired = wanted;
    else if (mode.Replicated) desired = mode.Replicated.Replicas ?? 1;
    else desired = status.DesiredTasks ?? 0;
    return { running, desired, current, image, completed };
  }

  // ---- drawing ------------------------------------------------------------------------------------------

  function el(tag, attributes, ...children) {
    const element = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) {
      if (key === "class") element.className = value;
      else if (key.startsWith("data-")) element.dataset[key.slice(5).replace(/-(.)/g, (_, c) => c.toUpperCase())] = value;
      else element.setAttribute(key, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) element.append(child);
    }
    return element;
  }

  function queueRender() {
    if (renderQueued) return;
    renderQueued = true;
    window.requestAnimationFrame(() => {
      renderQueued = false;
      render();
    });
  }

  function render() {
    renderNodes();
    renderServices();
    renderPending();
    renderEvents();
    let running = 0;
    for (const task of state.tasks.values()) {
      const node = state.nodes.get(task.nodeId);
      if (task.state === "running" && task.desired === "running" && node && nodeState(node) === "ready") running += 1;
    }
    document.getElementById("summary").textContent =
      `${state.nodes.size} nodes · ${state.services.size} services · ${running} tasks running`;
  }

  const nodeColumns = new Map(); // node ID -> its column, kept so a click never lands on a replaced button

  function nodeColumn(id) {
    let column = nodeColumns.get(id);
    if (column) return column;
    const button = el("button", { type: "button", class: "availability-action" });
    button.addEventListener("click", () => {
      const node = state.nodes.get(id);
      if (node) setAvailability(node, button.dataset.action);
    });
    column = el("section", { class: "node", "data-node-id": id },
      el("header", {}, el("span", { class: "hostname" }), el("span", { class: "role" }),
        el("div", { class: "meta" }, el("span", { class: "state" }), " · ", el("span", { class: "availability" }),
          el("span", { class: "leader" })),
        el("div", { class: "actions" }, button)),
      el("div", { class: "tasks" }));
    nodeColumns.set(id, column);
    return column;
  }

  function renderNodes() {
    const container = document.getElementById("nodes");
    const byNode = new Map();
    for (const task of state.tasks.values()) {
      if (!task.nodeId || !shown(task) || UNPLACED.has(task.state)) continue;
      if (!byNode.has(task.nodeId)) byNode.set(task.nodeId, []);
      byNode.get(task.nodeId).push(task);
    }
    for (const id of [...nodeColumns.keys()]) {
      if (!state.nodes.has(id)) nodeColumns.delete(id);
    }
    const nodes = [...state.nodes.values()].sort((a, b) =>
      ((a.Spec || {}).Role === "manager" ? 0 : 1) - ((b.Spec || {}).Role === "manager" ? 0 : 1)
      || nodeName(a).localeCompare(nodeName(b)));
    const columns = nodes.map((node) => {
      const column = nodeColumn(node.ID);
      fillNodeColumn(column, node, byNode.get(node.ID) || []);
      return column;
    });
    const same = columns.length === container.children.length
      && columns.every((column, i) => container.children[i] === column);
    if (!same) container.replaceChildren(...columns);
  }

  function fillNodeColumn(column, node, tasks) {
    const spec = node.Spec || {};
    const availability = spec.Availability || "active";
    const status = nodeState(node);
    Object.assign(column.dataset, { hostname: nodeName(node), state: status, availability, role: spec.Role || "" });
    column.querySelector(".hostname").textContent = nodeName(node);
    column.querySelector(".role").textContent = spec.Role || "";
    column.querySelector(".state").textContent = status;
    column.querySelector(".availability").textContent = availability;
    column.querySelector(".leader").textContent = (node.ManagerStatus || {}).Leader ? " · leader" : "";
    const button = column.querySelector(".availability-action");
    const drained = availability !== "active";
    button.dataset.action = drained ? "active" : "drain";
    button.textContent = drained ? "Activate" : "Drain";
    tasks.sort((a, b) => serviceName(a).localeCompare(serviceName(b)) || a.slot - b.slot || a.id.localeCompare(b.id));
    // A node that is not ready reports nothing: its tasks' states are the last it reported.
    const unreachable = status !== "ready";
    const cards = tasks.map((task) => {
      const stopping = task.desired !== "running" && !TERMINAL.has(task.state) && task.desired !== "complete";
      let label = stopping ? `${task.state} → ${task.desired}` : task.state;
      if (unreachable && !TERMINAL.has(task.state)) label = `was ${label}`;
      return el("div", {
        class: `task ${cardClass(task)}${stopping ? " stopping" : ""}${unreachable ? " unreachable" : ""}`,
        "data-task-id": task.id, "data-service": serviceName(task), "data-slot": String(task.slot),
        "data-state": task.state, "data-desired": task.desired, title: task.err || task.image,
      }, el("span", { class: "name" }, taskName(task)), el("span", { class: "task-state" }, label));
    });
    column.querySelector(".tasks").replaceChildren(...cards);
  }

  const serviceRows = new Map(); // service ID -> its row, kept so what is typed in its inputs stays

  function serviceRow(id) {
    let row = serviceRows.get(id);
    if (row) return row;
    const scaleInput = el("input", { type: "number", min: "0", step: "1", class: "scale-input", "aria-label": "Replicas" });
    const imageInput = el("input", { type: "text", class: "image-input", "aria-label": "Image", spellcheck: "false" });
    const scaleForm = el("form", { class: "scale-form" }, scaleInput,
      el("button", { type: "submit", class: "scale" }, "Scale"));
    const imageForm = el("form", { class: "image-form" }, imageInput,
      el("button", { type: "submit", class: "update-image" }, "Update image"));
    const rollbackButton = el("button", { type: "button", class: "rollback" }, "Rollback");
    for (const input of [scaleInput, imageInput]) input.addEventListener("input", () => { input.dataset.edited = "1"; });
    const done = (input) => (ok) => { if (ok) delete input.dataset.edited; };
    scaleForm.addEventListener("submit", (event) => {
      event.preventDefault();
      scale(state.services.get(id), scaleInput.value.trim()).then(done(scaleInput));
    });
    imageForm.addEventListener("submit", (event) => {
      event.preventDefault();
      updateImage(state.services.get(id), imageInput.value).then(done(imageInput));
    });
    rollbackButton.addEventListener("click", () => rollback(state.services.get(id)));
    row = el("article", { class: "service", "data-service-id": id },
      el("div", { class: "title" }, el("span", { class: "name" }), el("span", { class: "replicas" }),
        el("span", { class: "mode" }), el("span", { class: "image" })),
      el("div", { class: "update" }),
      el("div", { class: "controls" }, scaleForm, imageForm, rollbackButton));
    serviceRows.set(id, row);
    return row;
  }

  function renderServices() {
    const container = document.getElementById("services");
    const services = [...state.services.values()].sort((a, b) => a.Spec.Name.localeCompare(b.Spec.Name));
    for (const id of [...serviceRows.keys()]) {
      if (!state.services.has(id)) serviceRows.delete(id);
    }
    const rows = services.map((service) => {
      const row = serviceRow(service.ID);
      fillServiceRow(row, service);
      return row;
    });
    const same = rows.length === container.children.length && rows.every((row, i) => container.children[i] === row);
    if (!same) container.replaceChildren(...rows);
    document.getElementById("no-services").hidden = rows.length > 0;
  }

  function fillServiceRow(row, service) {
    const { running, desired, current, image, completed } = counts(service);
    const mode = modeOf(service);
    row.dataset.name = service.Spec.Name;
    row.querySelector(".name").textContent = service.Spec.Name;
    const replicas = row.querySelector(".replicas");
    if (mode === "replicated job" || mode === "global job") {
      // As `service ls` shows a job: running of the wanted concurrency, then completions of the total.
      const total = mode === "replicated job"
        ? (service.Spec.Mode.ReplicatedJob.TotalCompletions ?? 1) : desired + completed;
      replicas.textContent = `${running}/${desired} (${completed}/${total} completed)`;
      replicas.classList.toggle("short", completed < total && running < desired);
    } else {
      replicas.textContent = `${running}/${desired}`;
      replicas.classList.toggle("short", running < desired);
    }
    row.querySelector(".mode").textContent = mode;
    row.querySelector(".image").textContent = image;
    const update = row.querySelector(".update");
    const status = service.UpdateStatus;
    if (status && status.State) {
      update.dataset.state = status.State;
      const parts = [status.State.replace(/_/g, " ")];
      if (status.Message && status.Message.toLowerCase() !== parts[0]) parts.push(status.Message);
      update.replaceChildren(parts.join(": "));
      if (UPDATING.has(status.State)) {
        update.append(" ", el("progress", { max: String(Math.max(desired, 1)), value: String(current) }),
          ` ${current}/${desired} running ${image}`);
      }
    } else {
      delete update.dataset.state;
      update.replaceChildren();
    }
    const scaleInput = row.querySelector(".scale-input");
    const scalable = mode === "replicated" || mode === "replicated job";
    row.querySelector(".scale-form").hidden = !scalable;
    const specified = mode === "replicated job"
      ? (service.Spec.Mode.ReplicatedJob.TotalCompletions ?? 1)
      : ((service.Spec.Mode.Replicated || {}).Replicas ?? 1);
    if (!scaleInput.dataset.edited && document.activeElement !== scaleInput) scaleInput.value = String(specified);
    const imageInput = row.querySelector(".image-input");
    if (!imageInput.dataset.edited && document.activeElement !== imageInput) imageInput.value = image;
    row.querySelector(".rollback").disabled = !service.PreviousSpec;
  }

  function renderPending() {
    const pending = [...state.tasks.values()]
      .filter((task) => UNPLACED.has(task.state) && task.desired === "running")
      .sort((a, b) => taskName(a).localeCompare(taskName(b)));
    const items = pending.map((task) => el("li", { "data-task-id": task.id, "data-service": serviceName(task) },
      el("span", { class: "name" }, taskName(task)), " ", el("span", { class: "task-state" }, task.state),
      task.err ? el("div", { class: "err" }, task.err) : null));
    document.getElementById("pending").replaceChildren(...items);
    document.getElementById("no-pending").hidden = items.length > 0;
  }

  function describe(event) {
    const attributes = (event.Actor || {}).Attributes || {};
    const details = [];
    if (event.Type === "task") {
      const node = state.nodes.get(attributes["node.id"]);
      let text = attributes.state || "";
      if (attributes["state.old"]) text += ` (was ${attributes["state.old"]})`;
      if (node) text += ` on ${nodeName(node)}`;
      if (attributes.desiredstate && attributes.desiredstate !== "running") text += `, desired ${attributes.desiredstate}`;
      if (attributes.err) text += `: ${attributes.err}`;
      details.push(text);
    } else {
      for (const key of Object.keys(attributes).sort()) {
        if (!key.endsWith(".new")) continue;
        const field = key.slice(0, -4);
        const old = attributes[`${field}.old`];
        details.push(old === undefined ? `${field} ${attributes[key]}` : `${field} ${old} → ${attributes[key]}`);
      }
    }
    return details.join(", ");
  }

  function renderEvents() {
    const withTasks = document.getElementById("show-task-events").checked;
    let events = state.events;
    if (withTasks) {
      events = [...state.events, ...state.taskEvents].sort((a, b) => (b.timeNano || 0) - (a.timeNano || 0));
      events.length = Math.min(events.length, MAX_EVENTS);
    }
    const items = events.map((event) => {
      const attributes = (event.Actor || {}).Attributes || {};
      const when = new Date(Math.floor((event.timeNano || event.time * 1e9) / 1e6));
      return el("li", { "data-type": event.Type, "data-action": event.Action },
        el("time", { datetime: when.toISOString() }, when.toLocaleTimeString()),
        el("span", { class: "type" }, event.Type), ` ${event.Action} `,
        el("span", { class: "name" }, attributes.name || (event.Actor || {}).ID || ""), " ",
        el("span", { class: "detail" }, describe(event)));
    });
    document.getElementById("events").replaceChildren(...items);
  }

  // ---- start --------------------------------------------------------------------------------------------

  document.getElementById("notice-close").addEventListener("click", () => {
    document.getElementById("notice").hidden = true;
  });
  document.getElementById("show-task-events").addEventListener("change", queueRender);
  startSession().then(follow, (error) => {
    setConnection("error", "not signed in");
    notice(error.message);
  });
})();
