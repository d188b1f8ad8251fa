//! Supervision of a server's worker threads: they all run until the server's
//! cancellation token fires; the first one to fail (or to stop early) stops the rest,
//! and its error is the server's.

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Wait for every worker in `workers`. `what` names the server in errors.
pub(crate) async fn supervise(
    mut workers: JoinSet<Result<(), Error>>,
    cancel: &CancellationToken,
    what: &'static str,
) -> Result<(), Error> {
    let mut result = Ok(());
    while let Some(ended) = workers.join_next().await {
        let failure = match ended {
            Ok(Ok(())) if cancel.is_cancelled() => continue,
            Ok(Ok(())) => Error::Stopped { what },
            Ok(Err(e)) => e,
            Err(e) => Error::Panicked {
                what,
                message: e.to_string(),
            },
        };
        if result.is_ok() {
            // The daemon treats a failed server as fatal: stop its other workers too.
            cancel.cancel();
            result = Err(failure);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set with one well-behaved worker: it runs until `cancel` fires.
    fn until_cancelled(cancel: &CancellationToken) -> JoinSet<Result<(), Error>> {
        let mut workers = JoinSet::new();
        let token = cancel.clone();
        workers.spawn(async move {
            token.cancelled().await;
            Ok(())
        });
        workers
    }

    #[tokio::test]
    async fn a_failing_worker_stops_the_others_and_its_error_is_returned() {
        let cancel = CancellationToken::new();
        let mut workers = until_cancelled(&cancel);
        workers.spawn(async {
            Err(Error::Socket {
                what: "boom",
                source: std::io::Error::other("gone"),
            })
        });
        let result = supervise(workers, &cancel, "test").await;
        assert!(
            matches!(result, Err(Error::Socket { what: "boom", .. })),
            "{result:?}"
        );
        assert!(cancel.is_cancelled());
    }

    #[tokio::test]
    async fn workers_ending_on_cancel_are_a_clean_stop_and_an_early_end_is_not() {
        let cancel = CancellationToken::new();
        let workers = until_cancelled(&cancel);
        cancel.cancel();
        assert!(supervise(workers, &cancel, "test").await.is_ok());

        let mut workers = JoinSet::new();
        workers.spawn(async { Ok(()) });
        let result = supervise(workers, &CancellationToken::new(), "test").await;
        assert!(
            matches!(result, Err(Error::Stopped { what: "test" })),
            "{result:?}"
        );
    }
}
