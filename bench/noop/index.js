// The no-op Worker: answers every request with "ok". A ceiling for the runtime's own path.
export default {
  fetch() {
    return new Response("ok");
  },
};
