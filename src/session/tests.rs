use super::*;
use crate::dispatch::InlineTaskDispatcher;
use crate::sync::{AtomicUsize, Ordering};

#[derive(Default)]
struct Counting {
    detached: AtomicUsize,
    shut_down: AtomicUsize,
}
impl Service for Counting {
    fn on_detach(&self) {
        self.detached.fetch_add(1, Ordering::SeqCst);
    }
    fn on_shutdown(&self) {
        self.shut_down.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Access(AtomicUsize);
impl ControllerAccess for Access {
    fn disconnect(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn session() -> Session {
    Session::new(Arc::new(InlineTaskDispatcher::new()))
}

#[test]
fn services_and_access_are_released() {
    let s = session();
    let svc = s.create_service(Counting::default);
    let access = Arc::new(Access::default());
    s.attach(access.clone()).unwrap();
    assert_eq!(Arc::strong_count(&access), 2);
    s.detach();
    assert_eq!(access.0.load(Ordering::SeqCst), 1);
    assert_eq!(Arc::strong_count(&access), 1, "access kept after detach");
    s.wait_for_shutdown().unwrap();
    assert_eq!(Arc::strong_count(&svc), 1, "service kept after shutdown");
    assert_eq!(svc.detached.load(Ordering::SeqCst), 1);
    assert_eq!(svc.shut_down.load(Ordering::SeqCst), 1);
}

#[test]
fn attach_is_refused_when_it_must_be() {
    let s = session();
    s.attach(Arc::new(Access::default())).unwrap();
    assert!(matches!(
        s.attach(Arc::new(Access::default())),
        Err(SessionError::AlreadyAttached)
    ));
    s.detach();
    assert!(matches!(
        s.attach(Arc::new(Access::default())),
        Err(SessionError::Detached)
    ));
    let s = session();
    s.shutdown(|| {});
    assert!(matches!(
        s.attach(Arc::new(Access::default())),
        Err(SessionError::ShuttingDown)
    ));
    s.wait_for_shutdown().unwrap();
}

#[test]
fn dropping_the_last_handle_shuts_down() {
    let s = session();
    let svc = s.create_service(Counting::default);
    drop(s);
    assert_eq!(svc.detached.load(Ordering::SeqCst), 1);
    assert_eq!(svc.shut_down.load(Ordering::SeqCst), 1);
}

#[test]
fn detach_from_inside_on_detach_returns() {
    struct Reentrant(Mutex<Option<Session>>);
    impl Service for Reentrant {
        fn on_detach(&self) {
            let taken = self.0.lock().take();
            if let Some(s) = taken {
                s.detach();
                assert!(matches!(
                    s.wait_for_shutdown(),
                    Err(SessionError::WouldDeadlock)
                ));
            }
        }
        fn on_shutdown(&self) {}
    }
    let s = session();
    s.create_service(|| Reentrant(Mutex::new(Some(s.clone()))));
    s.detach();
    assert!(s.is_detached());
    s.wait_for_shutdown().unwrap();
}
