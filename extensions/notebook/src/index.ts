/**
 * Warnings in JupyterLab before the session's Slurm job ends, and saving open documents when
 * Slurm's save signal arrives. Polls the server's `GET {base_url}aifl/session`
 * (aifl_notebook/session.py) and shows JupyterLab notifications in JupyterLab's own language; the
 * Dutch texts are in aifl_notebook/locale/nl_NL/LC_MESSAGES/aifl_notebook.json.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { ITranslator, nullTranslator, TranslationBundle } from '@jupyterlab/translation';

/** The answer of `GET aifl/session` (the fields this plugin uses). */
interface ISessionStatus {
  seconds_left: number | null;
  save_signal: boolean;
  idle_timeout: number;
  idle_seconds: number;
}

const POLL_MS = 30_000;
/** Minutes before the time limit at which a warning shows. */
const END_WARNINGS = [15, 5];
/** The idle warning shows this long before the idle timeout (or a quarter of the timeout if shorter). */
const IDLE_LEAD_S = 600;

/** Whole minutes, at least one. */
function minutes(seconds: number): number {
  return Math.max(1, Math.ceil(seconds / 60));
}

class SessionWarnings {
  constructor(
    private readonly app: JupyterFrontEnd,
    private readonly trans: TranslationBundle
  ) {}

  /** Ask the server how the session stands and show what is due. */
  async poll(): Promise<void> {
    const settings = this.app.serviceManager.serverSettings;
    let status: ISessionStatus;
    try {
      const url = URLExt.join(settings.baseUrl, 'aifl', 'session');
      const response = await ServerConnection.makeRequest(url, {}, settings);
      if (!response.ok) {
        return;
      }
      status = await response.json();
    } catch {
      return; // the server is not reachable right now; the next poll tries again
    }
    await this.checkEnd(status);
    this.checkIdle(status);
  }

  private async checkEnd(status: ISessionStatus): Promise<void> {
    const left = status.seconds_left;
    if (left === null) {
      return;
    }
    const n = minutes(left);
    if (status.save_signal && !this.saved) {
      this.saved = true;
      END_WARNINGS.filter(m => left <= m * 60).forEach(m => this.warned.add(m));
      try {
        await this.app.commands.execute('docmanager:save-all');
      } catch (reason) {
        console.error('aifl: saving open documents failed', reason);
      }
      Notification.warning(
        this.trans._n(
          'Your session ends in %1 minute; your open notebooks were saved.',
          'Your session ends in %1 minutes; your open notebooks were saved.',
          n
        ),
        { autoClose: false }
      );
      return;
    }
    const due = END_WARNINGS.filter(m => left <= m * 60 && !this.warned.has(m));
    if (due.length) {
      due.forEach(m => this.warned.add(m));
      Notification.warning(
        this.trans._n(
          'Your session ends in %1 minute — save your work.',
          'Your session ends in %1 minutes — save your work.',
          n
        ),
        { autoClose: false }
      );
    }
  }

  private checkIdle(status: ISessionStatus): void {
    const timeout = status.idle_timeout;
    const left = timeout - status.idle_seconds;
    if (!timeout || left > Math.min(IDLE_LEAD_S, timeout / 4)) {
      if (this.idleId) {
        Notification.dismiss(this.idleId); // there was activity: the session stays
        this.idleId = '';
      }
      return;
    }
    const n = minutes(left);
    const message = this.trans._n(
      'This session stops in %1 minute because it has not been used; keep working to keep it.',
      'This session stops in %1 minutes because it has not been used; keep working to keep it.',
      n
    );
    if (this.idleId) {
      Notification.update({ id: this.idleId, message, type: 'warning', autoClose: false });
    } else {
      this.idleId = Notification.warning(message, { autoClose: false });
    }
  }

  private saved = false;
  private readonly warned = new Set<number>();
  private idleId = '';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'aifl-notebook:session-warnings',
  description: 'Warns before the session ends or is stopped for being idle, and saves open notebooks.',
  autoStart: true,
  optional: [ITranslator],
  activate: (app: JupyterFrontEnd, translator: ITranslator | null) => {
    const warnings = new SessionWarnings(app, (translator ?? nullTranslator).load('aifl_notebook'));
    void app.restored.then(() => {
      void warnings.poll();
      window.setInterval(() => void warnings.poll(), POLL_MS);
    });
  }
};

export default plugin;
